"""Device slots: which GPUs (or CPU slots) a run may use, and the FIFO queue for them.

- ``devices``: what the machine offers (GPUs through NVML, CPU slots) and who holds each GPU;
- ``leases``: flock'ed lock files and the lease a run holds;
- ``queue``: the FIFO queue and ``acquire``, which the engine calls before importing torch;
- ``views``: what the slots look like now (``cockpit ls``, the app);
- ``words``: how slots and queues read in a sentence.
"""

from engine.torchfree.slots.devices import (
    CONFIG_NAME,
    CPU_SLOTS_ENV,
    FAKE_GPUS_ENV,
    SlotError,
    cpu_slot_count,
    gpu_indices,
    physical_cores,
)
from engine.torchfree.slots.leases import (
    POLL_S,
    Ask,
    Lease,
    check_fits,
    demand,
    foreign_processes,
    held_fds,
    slots_root,
    slurm_job_lease,
)
from engine.torchfree.slots.queue import acquire, announce
from engine.torchfree.slots.views import SlotView, describe_slots, queued_runs, slot_views
from engine.torchfree.slots.words import ordinal

__all__ = [
    "CONFIG_NAME",
    "CPU_SLOTS_ENV",
    "FAKE_GPUS_ENV",
    "POLL_S",
    "Ask",
    "Lease",
    "SlotError",
    "SlotView",
    "acquire",
    "announce",
    "check_fits",
    "cpu_slot_count",
    "demand",
    "describe_slots",
    "foreign_processes",
    "gpu_indices",
    "held_fds",
    "ordinal",
    "physical_cores",
    "queued_runs",
    "slot_views",
    "slots_root",
    "slurm_job_lease",
]
