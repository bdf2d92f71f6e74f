"""What every croptune stage on Ray shares: starting (or joining) Ray, and a quiet Ray Data.

Ray is imported inside the functions: croptune runs without it unless --engine ray is asked.
"""

from __future__ import annotations

import logging


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the Ray at address (or start a local one, num_cpus cores) unless this process is
    connected already; True when it was started here (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        address=address,
        num_cpus=num_cpus if address is None else None,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    quiet_ray_data()
    return True


def quiet_ray_data() -> None:
    """Ray Data's own progress lines off the console: croptune's bar counts the work (Ray
    keeps its logs in the session's logs folder)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Its memory and hanging-task detectors advise on Ray's own tuning, in the console; the
    # failures croptune reports are the items'.
    context.issue_detectors_config.detectors = []
    logging.getLogger("ray.data").setLevel(logging.ERROR)
