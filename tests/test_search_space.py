"""The search space's expansion (remote_scripts/search_space.expand): its bound and duplicates."""
import pytest

from remote_scripts import search_space
from remote_scripts.search_space import MAX_TRIALS, SpaceError, expand


def test_a_space_of_more_combinations_than_a_search_tries_is_refused_before_it_is_built():
    values = [round(0.0001 * i, 6) for i in range(1, 41)]
    with pytest.raises(SpaceError, match=r"^groups 1 to 1 already make 1,600 combinations; a search tries at "
                                         r"most 1,000: give fewer values$"):
        expand([{"lr": values, "weight_decay": values}])


def test_the_bound_counts_every_group_together():
    values = [round(0.0001 * i, 6) for i in range(1, 26)]
    space = [{"lr": values, "weight_decay": values}, {"lr": values, "label_smoothing": [0.0, 0.1]}]
    assert len(expand(space)) == 675
    with pytest.raises(SpaceError, match="^groups 1 to 3 already make 1,300 combinations"):
        expand(space + [{"lr": values, "weight_decay": values}])


def test_duplicates_are_dropped_whatever_the_order_of_their_options():
    lrs = [round(0.00001 * i, 6) for i in range(1, 21)]
    decays = [round(0.001 * i, 6) for i in range(1, 26)]
    trials = expand([{"lr": lrs, "weight_decay": decays}, {"weight_decay": decays, "lr": lrs}])
    assert len(trials) == 500  # the second group is the first in another order: all duplicates
    assert trials[0] == {"lr": lrs[0], "weight_decay": decays[0]} and trials[-1] == {"lr": lrs[-1],
                                                                                   "weight_decay": decays[-1]}


def test_the_default_space_is_within_the_bound():
    assert 0 < len(expand(search_space.DEFAULT_SPACE)) <= MAX_TRIALS
