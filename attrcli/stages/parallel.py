"""Attribution requests in parallel processes, for a study's cold run on a many-core CPU.

Each request runs in a process of its own (``spawn``: no state shared with this one), with the
cores shared out as torch threads, exactly as ``attrcli attribute`` would run it: the artifacts
are the same, and a killed run resumes from the same checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrcli.progress import Progress

if TYPE_CHECKING:
    from attrcli.stages.plan import AttributeRequest, AttributeResult

__all__ = ["pending_jobs", "run_requests"]


def pending_jobs(request: AttributeRequest, *, adapters: dict[Any, Any] | None = None) -> tuple[list, list]:
    """The jobs of ``request``, and those not up to date (all of them with ``force``), found as
    ``attribute`` finds them: the model with its weights (kept in ``adapters`` for the next
    request), its weights hash, the plan and each artifact's freshness. Nothing is written; a
    digits model not yet trained is trained here, as ``attribute`` would train it."""
    from attrcli.data.gridfile import load_grid_file
    from attrcli.models import create_model, state_dict_hash
    from attrcli.stages.plan import plan, up_to_date

    adapters = {} if adapters is None else adapters
    key = (request.model, str(request.weights), str(request.cache_root))
    if key not in adapters:
        adapter = create_model(request.model, weights=request.weights, cache_dir=request.cache_root)
        if not adapter.weights_hash:
            adapter.weights_hash = state_dict_hash(adapter.module.state_dict())
        adapters[key] = adapter
    jobs = plan(request, adapter=adapters[key], grid_file=load_grid_file(request.grids)).jobs
    return jobs, (jobs if request.force else [job for job in jobs if not up_to_date(job)])


def _threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def _run(request: AttributeRequest) -> list[AttributeResult]:
    from attrcli.stages.attribute import run_attribute

    return run_attribute(request)


def run_requests(requests: list[AttributeRequest], *, workers: int,
                 progress: Progress | None = None) -> list[list[AttributeResult]]:
    """Each request's results, in order, computed by ``workers`` processes. The first failure
    is raised here (its one-line error), after the running requests have finished."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from attrcli.threads import usable_cores

    threads = max(1, usable_cores() // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_run, request) for request in requests]
        out = []
        try:
            for i, future in enumerate(futures):
                out.append(future.result())
                if progress:
                    progress("attribute jobs", i + 1, len(futures))
        except BaseException:
            for future in futures:
                future.cancel()  # the queued ones; the running ones finish their checkpoints
            raise
    return out
