"""The Azure ML compute catalogue: NC-series sizes, short aliases, and retired-size substitutes.

Why a catalogue of our own: the original tutorials say `Standard_NC12`/`Standard_NC24` (Tesla K80),
which Azure retired in 2023, and the P100 NCv2 and V100 NCv3 sizes followed. Users (and old
scripts) keep typing those names, so they still resolve -- to the size Microsoft's N-series
migration guide names for each (notes/azure-rest-shapes.md) -- and the resolution prints one line
saying so, including a change in GPU count, instead of a provisioning failure minutes later. The
table also tells `--nodes` how many processes to start per node (one per GPU) and the plan how much
GPU memory a node has. Figures come from the Azure size pages (see
/work/shared/notes/orchestration-peers.md section 5). No Azure import here: `orchestrate compute
sizes` and alias checks must stay instant.
"""
from dataclasses import asdict, dataclass

from ...errors import UsageError


@dataclass(frozen=True)
class Size:
    """One Azure VM size. `retired` is the retirement date (ISO) or None while the size is sold."""
    name: str
    gpus: int
    gpu_type: str
    gpu_memory_gib: int
    vcpus: int
    retired: str = None

    @property
    def status(self):
        return f"retired {self.retired}" if self.retired else "current"


_NC_V1, _NC_V2, _NC_V3 = "2023-09-06", "2023-09-06", "2025-09-30"

SIZES = {s.name.lower(): s for s in [
    # current
    Size("Standard_DS3_v2", 0, "-", 0, 4),  # Azure ML's default CPU size: cheap smoke tests
    Size("Standard_NC4as_T4_v3", 1, "T4", 16, 4),
    Size("Standard_NC8as_T4_v3", 1, "T4", 16, 8),
    Size("Standard_NC16as_T4_v3", 1, "T4", 16, 16),
    Size("Standard_NC64as_T4_v3", 4, "T4", 64, 64),
    Size("Standard_NC24ads_A100_v4", 1, "A100 80GB", 80, 24),
    Size("Standard_NC48ads_A100_v4", 2, "A100 80GB", 160, 48),
    Size("Standard_NC96ads_A100_v4", 4, "A100 80GB", 320, 96),
    Size("Standard_NC40ads_H100_v5", 1, "H100 NVL", 94, 40),
    Size("Standard_NC80adis_H100_v5", 2, "H100 NVL", 188, 80),
    # retired (K80 is half a card per GPU; P100 16 GB; V100 16 GB)
    Size("Standard_NC6", 1, "K80", 12, 6, _NC_V1),
    Size("Standard_NC12", 2, "K80", 24, 12, _NC_V1),
    Size("Standard_NC24", 4, "K80", 48, 24, _NC_V1),
    Size("Standard_NC24r", 4, "K80", 48, 24, _NC_V1),
    Size("Standard_NC6s_v2", 1, "P100", 16, 6, _NC_V2),
    Size("Standard_NC12s_v2", 2, "P100", 32, 12, _NC_V2),
    Size("Standard_NC24s_v2", 4, "P100", 64, 24, _NC_V2),
    Size("Standard_NC6s_v3", 1, "V100", 16, 6, _NC_V3),
    Size("Standard_NC12s_v3", 2, "V100", 32, 12, _NC_V3),
    Size("Standard_NC24s_v3", 4, "V100", 64, 24, _NC_V3),
]}

# alias -> Azure size. The alias is also the cluster name, so it must be a valid Azure ML compute
# name (letters, digits, hyphens, at most 16 characters).
ALIASES = {
    "cpu": "Standard_DS3_v2",
    "gpu-t4": "Standard_NC4as_T4_v3",
    "gpu-t4x4": "Standard_NC64as_T4_v3",
    "gpu-a100": "Standard_NC24ads_A100_v4",
    "gpu-a100x2": "Standard_NC48ads_A100_v4",
    "gpu-a100x4": "Standard_NC96ads_A100_v4",
    "gpu-h100": "Standard_NC40ads_H100_v5",
    "gpu-h100x2": "Standard_NC80adis_H100_v5",
    # the tutorials' K80 sizes (retired): resolve through SUBSTITUTES
    "gpu-nc12": "Standard_NC12",
    "gpu-nc24": "Standard_NC24",
}

# retired size -> its substitute, as Microsoft's N-series migration guide advises: the K80 NC sizes
# move to NC T4 v3 (where the guide offers NC4as or NC8as for NC6, NC8as keeps NC6's vCPUs and
# memory), the P100 NCv2 and V100 NCv3 sizes to NC A100 v4. NC12 -> NC16as_T4_v3 halves the GPU
# count (2 K80 halves -> 1 T4): the notice says so.
SUBSTITUTES = {
    "Standard_NC6": "Standard_NC8as_T4_v3",
    "Standard_NC12": "Standard_NC16as_T4_v3",
    "Standard_NC24": "Standard_NC64as_T4_v3",
    "Standard_NC24r": "Standard_NC64as_T4_v3",
    "Standard_NC6s_v2": "Standard_NC24ads_A100_v4",
    "Standard_NC12s_v2": "Standard_NC48ads_A100_v4",
    "Standard_NC24s_v2": "Standard_NC96ads_A100_v4",
    "Standard_NC6s_v3": "Standard_NC24ads_A100_v4",
    "Standard_NC12s_v3": "Standard_NC48ads_A100_v4",
    "Standard_NC24s_v3": "Standard_NC96ads_A100_v4",
}


@dataclass(frozen=True)
class Resolved:
    """What `--compute X` means: the cluster name to use, its size, and a notice line (or "")."""
    cluster: str
    size: Size
    notice: str = ""


def _alias_of(size_name):
    return next((a for a, s in ALIASES.items() if s == size_name), None)


def cluster_name_for(size_name):
    """A valid Azure ML compute name for a raw size: Standard_NC8as_T4_v3 -> nc8as-t4-v3."""
    name = size_name.lower().removeprefix("standard_").replace("_", "-")
    return name[:16].rstrip("-")


def resolve(value):
    """Resolve an alias or a raw size name; retired sizes become their substitute.

    Unknown names raise UsageError listing the aliases (exit 2), so a typo never reaches Azure.
    """
    key = value.strip().lower()
    if key in ALIASES:
        size = SIZES[ALIASES[key].lower()]
    elif key in SIZES:
        size = SIZES[key]
    else:
        raise UsageError(f"unknown compute {value!r}; use an alias ({', '.join(ALIASES)}) or an "
                        f"Azure size name such as Standard_NC24ads_A100_v4 "
                        f"(see `orchestrate compute sizes`)")
    if size.retired:
        current = SIZES[SUBSTITUTES[size.name].lower()]
        return Resolved(_cluster_of(current), current, _retirement_notice(size, current))
    return Resolved(_cluster_of(size), size)


def _cluster_of(size):
    """The size's alias when it has one (so an alias and its raw size share one cluster)."""
    return _alias_of(size.name) or cluster_name_for(size.name)


def _retirement_notice(retired, current):
    """One line: the retired size, its substitute, and what changes in GPUs."""
    gpus = f"; GPUs per node: {retired.gpus} -> {current.gpus}" if current.gpus != retired.gpus else ""
    return (f"notice: {retired.name} ({retired.gpus}x {retired.gpu_type}) was retired on "
            f"{retired.retired}; using {current.name} ({current.gpus}x {current.gpu_type}, "
            f"{current.gpu_memory_gib} GiB GPU memory) instead, as Microsoft's N-series migration "
            f"guide advises{gpus}")


def catalogue():
    """Rows for `orchestrate compute sizes`: every alias, then the raw sizes that have none."""
    rows = []
    for alias, size_name in ALIASES.items():
        rows.append(_row(alias, SIZES[size_name.lower()]))
    aliased = set(ALIASES.values())
    rows += [_row("", s) for s in SIZES.values() if s.name not in aliased]
    return rows


def _row(alias, size):
    row = {"alias": alias, **asdict(size), "status": size.status}
    if size.retired:
        row["substitute"] = SUBSTITUTES[size.name]
    return row
