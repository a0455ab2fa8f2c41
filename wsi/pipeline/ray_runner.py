"""Embed an archive across a Ray cluster: one Ray task per slide.

The driver (the process that calls ``embed_archive(..., backend="ray")`` or
``wsi embed --ray``) finds the slides, answers the ones already embedded from their feature
files (the same provenance check as the local backend, without loading the model), submits
one task per remaining slide and writes ``manifest.csv`` as results come back. A task runs
the local pipeline on its one slide inside a Ray worker (:class:`wsi.pipeline.embed._ArchiveRun`,
under the slide's lock), so it writes exactly the files the local backend writes into the
shared output folder. Workers keep the loaded encoder between their tasks.

A task whose worker dies (killed, out of memory, node lost) or that raises is retried up to
``retries`` times, then recorded ``failed``; a bad slide is a ``failed`` row at once, as
locally. Tasks ask for one GPU when the cluster has GPUs (CPUs otherwise).

Slides and the output folder must be on a filesystem every node sees at the same path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi.errors import BackendUnavailableError, InvalidParameterError

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


def _connect(ray: Any, address: str | None) -> bool:
    """Join or start a cluster; True when this call started it (and should shut it down)."""
    if ray.is_initialized():
        return False
    import logging

    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
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
        cpus = (max(1.0, min(8.0, min(n.get("CPU", 1) / n["GPU"] for n in gpu_nodes)))
                if gpus > 0 and gpu_nodes else 1.0)
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
    path: str,
    out: str,
    encoder: Any,
    encoder_name: str,
    weights: Any,
    tiling: Any,
    batch_size: int,
    device: str,
    precision: str,
    skip_done: bool,
    max_failed_fraction: float,
    cpus: float,
) -> dict[str, Any]:
    """What one Ray task runs: the local pipeline on one slide; returns its manifest row."""
    from wsi.pipeline.embed import _ArchiveRun
    from wsi.pipeline.loader import default_workers

    threads = max(1, int(cpus))
    if device == "cpu":
        import torch

        torch.set_num_threads(threads)
    loaded = _worker_encoder(encoder, weights, device, precision)
    workers = 0 if device == "cpu" else min(default_workers(device), max(0, threads - 1))
    run = _ArchiveRun(
        [Path(path)], Path(out), encoder_name, weights, tiling, batch_size, workers, device,
        precision, progress=False, debug=False, skip_done=skip_done,
        max_failed_fraction=max_failed_fraction, task_of_driver=True, loaded_encoder=loaded,
    )
    return run.run()[0]


def _gave_up_row(path: Path, exc: BaseException, attempts: int) -> dict[str, Any]:
    from wsi.store.manifest import manifest_row

    first = str(exc).strip().splitlines()
    detail = first[0] if first else type(exc).__name__
    return manifest_row(
        path, "failed",
        error=f"Ray task failed {attempts} times ({type(exc).__name__}: {detail}); see the Ray "
        "worker logs (/tmp/ray/session_latest/logs) and re-run to retry",
    )


def run_on_ray(run: Any, options: RayOptions) -> list[dict[str, Any]]:
    """Run an ``_ArchiveRun``'s slides as Ray tasks; its manifest is written here."""
    from tqdm.auto import tqdm

    from wsi.io.slide import slide_id_of
    from wsi.pipeline.batch import duplicate_id_row, failure_message
    from wsi.store.manifest import manifest_row

    ray = import_ray()
    if options.retries < 0:
        raise InvalidParameterError(f"retries must be ≥ 0, got {options.retries}")
    started_here = _connect(ray, options.address)
    try:
        place = _placement(ray, options, run.device)
        run.clean_folders()
        encoder = run.encoder_arg if isinstance(run.encoder_arg, str) else ray.put(run.encoder_arg)
        task = ray.remote(embed_slide_task).options(
            num_cpus=place.cpus, num_gpus=place.gpus, max_retries=options.retries,
            retry_exceptions=True, name="wsi-embed-slide",
        )
        max_pending = options.max_pending or 2 * place.slots
        rows: dict[int, dict[str, Any]] = {}
        bar = tqdm(total=len(run.slides), desc="slides", unit="slide", disable=not run.progress,
                   dynamic_ncols=True)

        def record(index: int, row: dict[str, Any], weak: bool = False) -> None:
            rows[index] = row
            run.manifest.update(row, weak=weak)
            if row["status"] == "failed":
                tqdm.write(f"{row['slide_id']}: failed: {row['error']}")
            bar.update(1)

        todo: list[tuple[int, Path]] = []
        seen: dict[str, Path] = {}
        for index, path in enumerate(run.slides):
            sid = slide_id_of(path)
            if sid in seen:
                record(index, duplicate_id_row(path, seen[sid]))
                continue
            seen[sid] = path
            try:
                done = run.done_row(path, run.embed_key(path))
            except Exception as exc:  # noqa: BLE001 - e.g. unreadable: the task reports it
                done = None if isinstance(exc, OSError) else manifest_row(
                    path, "failed", error=failure_message(exc))
            if done is not None:
                record(index, done, weak=True)  # found done: fills a gap only
            else:
                todo.append((index, path))

        pending: dict[Any, tuple[int, Path]] = {}
        queue = iter(todo)
        try:
            while True:
                while len(pending) < max_pending:
                    item = next(queue, None)
                    if item is None:
                        break
                    ref = task.remote(
                        os.fspath(item[1]), os.fspath(run.out), encoder, run.encoder_name,
                        run.weights, run.options, run.batch_size, place.device, run.precision,
                        run.skip_done, run.max_failed_fraction, place.cpus,
                    )
                    pending[ref] = item
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index, path = pending.pop(ref)
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        row = _gave_up_row(path, exc, options.retries + 1)
                    record(index, row)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            run.manifest.flush()
            bar.close()
        return [rows[i] for i in sorted(rows)]
    finally:
        if started_here:
            ray.shutdown()
