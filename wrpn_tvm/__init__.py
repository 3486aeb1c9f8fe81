"""wrpn-tvm: train WRPN (wide reduced-precision) networks and compile them to bit-serial kernels with TVM."""

import os

__version__ = "0.1.0"


def _default_tvm_threads() -> None:
    """Let TVM's CPU runtime use every physical core unless TVM_NUM_THREADS says otherwise.

    On x86, TVM 0.27 assumes 2-way hyper-threading and uses half of the logical CPUs, so on a
    machine without it (most VMs: 2 vCPUs here) every kernel ran on half the cores, and
    `runtime.config_threadpool` cannot raise that cap. The variable is read when TVM's thread pool
    starts, and is inherited by the processes MetaSchedule measures in."""
    if "TVM_NUM_THREADS" in os.environ:
        return
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    os.environ["TVM_NUM_THREADS"] = str(cores or os.cpu_count() or 1)


_default_tvm_threads()
