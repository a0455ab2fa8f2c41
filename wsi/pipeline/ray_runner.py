"""Embed an archive across a Ray cluster: one Ray task per slide.

The driver (the process that calls ``embed_archive(..., backend="ray")`` or
``wsi embed --ray``) runs the same plan as the local backend (:func:`wsi.pipeline.plan.
plan_slides`: duplicate ids, slides already embedded answered from their feature files
without loading the model), submits one task per remaining slide and writes
``manifest.csv`` as results come back. A task runs the public per-slide step
(:func:`wsi.pipeline.slide_step.embed_slide`, under the slide's lock) inside a Ray worker,
so it writes exactly the files the local backend writes into the shared output folder.
Workers keep the loaded encoder between their tasks.

A task whose worker dies (killed, out of memory, node lost) or that raises is retried up to
``retries`` times, then recorded ``failed``; a bad slide is a ``failed`` row at once, as
locally. Tasks ask for one GPU when the cluster has GPUs (CPUs otherwise).

Slides and the output folder must be on a filesystem every node sees at the same path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi.errors import BackendUnavailableError, InvalidParameterError

if TYPE_CHECKING:  # the runner's modules import torch: loaded when a run starts
    from wsi.pipeline.plan import Plan
    from wsi.pipeline.settings import EmbedSettings
    from wsi.store.manifest import Manifest

INSTALL_HINT = 'pip install "wsi[ray]"'


@dataclass(frozen=True)
class RayOptions:
    """How ``embed_archive(..., backend="ray")`` uses the cluster.

    Attributes:
        address: cluster to join (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``);
            None starts a local Ray on this machine unless ``ray.init`` was already called
            (or ``RAY_ADDRESS`` is set).
        retries: extra attempts for a task whose worker dies or that raises.
        cpus_per_task: CPUs reserved per slide task (None: 1 on a CPU cluster; on a GPU
            cluster the CPUs per GPU of the smallest GPU node, at most 8, for patch reading).
        gpus_per_task: GPUs per task (None: 1 when the cluster has GPUs and ``device`` is not
            ``"cpu"``, else 0; 0.5 runs two slides per GPU).
        max_pending: tasks submitted ahead of results (None: 2 x the tasks that fit at once),
            so a 100k-slide archive does not sit in the scheduler at once.
    """

    address: str | None = None
    retries: int = 2
    cpus_per_task: float | None = None
    gpus_per_task: float | None = None
    max_pending: int | None = None


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`BackendUnavailableError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the Ray backend needs Ray, which is not installed: {INSTALL_HINT} "
            "(on every node of the cluster)"
        ) from exc
    return ray


def connect_ray(ray: Any, address: str | None) -> bool:
    """Join or start a cluster; True when this call started it (and should shut it down)."""
    if ray.is_initialized():
        return False
    import logging

    ray.init(
        address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False
    )
    return True


@dataclass(frozen=True)
class _Placement:
    cpus: float
    gpus: float
    device: str | None
    slots: int


def _placement(ray: Any, options: RayOptions, device: str | None) -> _Placement:
    """Resources per task, checked against the nodes (an unschedulable task waits forever)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    if device == "cuda" and total_gpus == 0:
        raise InvalidParameterError(
            "device 'cuda' asked for but the Ray cluster has no GPUs; use --device cpu or "
            "add GPU nodes"
        )
    gpus = options.gpus_per_task
    if gpus is None:
        gpus = 1.0 if total_gpus > 0 and device != "cpu" else 0.0
    cpus = options.cpus_per_task
    if cpus is None:
        gpu_nodes = [n for n in nodes if n.get("GPU", 0) > 0]
        cpus = (
            max(1.0, min(8.0, min(n.get("CPU", 1) / n["GPU"] for n in gpu_nodes)))
            if gpus > 0 and gpu_nodes
            else 1.0
        )
    fits = [n for n in nodes if n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus]
    if not fits:
        raise InvalidParameterError(
            f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs for one slide task (cluster: "
            f"{total_cpus:g} CPUs, {total_gpus:g} GPUs); lower cpus/gpus per task"
        )
    slots = sum(
        int(min(n.get("CPU", 0) // cpus if cpus else 1e9, n.get("GPU", 0) // gpus if gpus else 1e9))
        for n in fits
    )
    return _Placement(cpus, gpus, "cuda" if gpus > 0 else (device or "cpu"), max(1, slots))


_WORKER_ENCODERS: dict[Any, Any] = {}
"""Encoders loaded in this Ray worker process, reused by its later tasks."""


def _worker_encoder(encoder: Any, weights: Any, device: str, precision: str) -> Any:
    key = (encoder if isinstance(encoder, str) else id(encoder), str(weights), device, precision)
    if key not in _WORKER_ENCODERS:
        if isinstance(encoder, str):
            from models.encoders import load_encoder

            loaded = load_encoder(encoder, weights=weights, device=device, precision=precision)
        else:
            loaded = encoder.placed(device, precision)
        _WORKER_ENCODERS.clear()  # one model per worker: don't pile up GPU memory
        _WORKER_ENCODERS[key] = loaded
    return _WORKER_ENCODERS[key]


def embed_slide_task(
    path: str, out: str, settings: EmbedSettings, encoder: Any, cpus: float
) -> dict[str, Any]:
    """What one Ray task runs: :func:`~wsi.pipeline.slide_step.embed_slide` on one slide with
    this worker's cached encoder (``encoder``: a name, or the ``Encoder`` object shipped once
    through Ray's object store; ``settings.device`` is the task's placement)."""
    from wsi.pipeline.loader import default_workers
    from wsi.pipeline.slide_step import embed_slide

    device = settings.device or "cpu"
    threads = max(1, int(cpus))
    if device == "cpu":
        import torch

        torch.set_num_threads(threads)
    loaded = _worker_encoder(encoder, settings.weights, device, settings.precision)
    workers = 0 if device == "cpu" else min(default_workers(device), max(0, threads - 1))
    task_settings = replace(settings, workers=workers, lanes=0, progress=False, debug=False)
    return embed_slide(path, out, task_settings, encoder=loaded)


def _gave_up_row(path: Path, exc: BaseException, attempts: int) -> dict[str, Any]:
    from wsi.store.manifest import manifest_row

    first = str(exc).strip().splitlines()
    detail = first[0] if first else type(exc).__name__
    return manifest_row(
        path,
        "failed",
        error=f"Ray task failed {attempts} times ({type(exc).__name__}: {detail}); see the Ray "
        "worker logs (/tmp/ray/session_latest/logs) and re-run to retry",
    )


def _run_tasks(
    ray: Any,
    items: Iterator[tuple[int, Path]],
    submit: Callable[[Path], Any],
    record: Callable[[int, dict[str, Any]], None],
    max_pending: int,
    attempts: int,
) -> None:
    """Keep up to ``max_pending`` tasks in flight; record each result as it comes back."""
    pending: dict[Any, tuple[int, Path]] = {}
    try:
        while True:
            while len(pending) < max_pending and (item := next(items, None)) is not None:
                pending[submit(item[1])] = item
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index, path = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    row = _gave_up_row(path, exc, attempts)
                record(index, row)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def run_on_ray(
    plan: Plan,
    out_dir: Path,
    settings: EmbedSettings,
    options: RayOptions,
    manifest: Manifest | None,
) -> list[dict[str, Any]]:
    """Run a plan's slides as Ray tasks, one per slide; return one row per slide (in order),
    each also saved to ``manifest`` (here, on the driver)."""
    from wsi.pipeline.batch import RowRecorder, clean_output_folder

    ray = import_ray()
    if options.retries < 0:
        raise InvalidParameterError(f"retries must be ≥ 0, got {options.retries}")
    started_here = connect_ray(ray, options.address)
    try:
        place = _placement(ray, options, settings.device)
        clean_output_folder(out_dir, settings.features_dir(out_dir))
        # an Encoder object travels once through the object store; the settings carry its name
        encoder = (
            settings.encoder if isinstance(settings.encoder, str) else ray.put(settings.encoder)
        )
        shipped = replace(settings, encoder=settings.encoder_name, device=place.device)
        task = ray.remote(embed_slide_task).options(
            num_cpus=place.cpus,
            num_gpus=place.gpus,
            max_retries=options.retries,
            retry_exceptions=True,
            name="wsi-embed-slide",
        )
        recorder = RowRecorder(manifest, len(plan.slides), progress=settings.progress)
        plan.run(
            recorder,
            lambda items: _run_tasks(
                ray,
                iter(items),
                lambda path: task.remote(
                    os.fspath(path), os.fspath(out_dir), shipped, encoder, place.cpus
                ),
                recorder.record,
                options.max_pending or 2 * place.slots,
                options.retries + 1,
            ),
        )
        return recorder.ordered()
    finally:
        if started_here:
            ray.shutdown()
