"""`serve()`: process set-up (threads, memory), the background load, and uvicorn until Ctrl-C."""

import logging
import os
import threading

import uvicorn

from faclip.errors import FaclipError
from faclip.search import BATCH_TOKENS, Retriever
from faclip.serve.app import MAX_QUEUE_WAIT_S, create_app, set_retriever

logger = logging.getLogger("faclip.serve")
WARM_UP_TEXT = "قورمه سبزی"


def set_threads(threads: int) -> None:
    """torch intra-op threads for the (serialised) model calls; FAISS one thread (a batch of queries is small)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(1)  # a few query vectors per search: OpenMP start-up would cost more than it saves


def return_freed_memory() -> None:
    """Make glibc hand large freed blocks (a decoded photo: hundreds of MB) back to the system at once.

    glibc raises its mmap threshold after each large free, so later photo-sized blocks come from per-thread
    heaps that keep their pages: 8 concurrent uploads of a 64 Mpx PNG left the server GBs larger for good.
    A fixed 1 MiB threshold keeps every such block mmapped (freed = returned). No-op off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_MMAP_THRESHOLD = -3
    mallopt(M_MMAP_THRESHOLD, 1 << 20)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def serve(*, model_dir, vision_dir, index_dir, docstore_path, lexical_dir=None, host: str = "127.0.0.1",
          port: int = 8000, max_upload_mb: float = 10.0, threads: int | None = None, cors_origins: tuple[str, ...] = (),
          max_batch: int = 32, max_batch_tokens: int = BATCH_TOKENS, max_wait_ms: float = 0.0,
          max_queue_wait: float = MAX_QUEUE_WAIT_S) -> None:
    """Open the port at once (/healthz answers, /readyz says 503), load the artifacts in the background, then
    answer queries until Ctrl-C. A stale index or a wrong vision model stops the server: one line, exit 2."""
    if not 0 < max_upload_mb < float("inf"):
        raise FaclipError(f"--max-upload-mb {max_upload_mb:g} is invalid; give a positive size in MB, e.g. 10")
    if "*" in cors_origins:
        raise FaclipError("--cors-origin '*' would let any web page query this server; name the origins instead")
    if max_batch < 1:
        raise FaclipError(f"--max-batch {max_batch} is invalid; give 1 (no batching) or more, e.g. 32")
    if not 0 <= max_wait_ms <= 1000:
        raise FaclipError(f"--max-wait-ms {max_wait_ms:g} is invalid; give 0 to 1000 ms, e.g. 2")
    if max_batch_tokens < 1:
        raise FaclipError(f"--max-batch-tokens {max_batch_tokens} is invalid; give at least 1, e.g. {BATCH_TOKENS}")
    if not 0 < max_queue_wait < float("inf"):
        raise FaclipError(f"--max-queue-wait {max_queue_wait:g} is invalid; give a positive number of seconds, "
                          f"e.g. {MAX_QUEUE_WAIT_S:g}")
    set_threads(threads or default_threads())
    return_freed_memory()
    app = create_app(None, max_upload_mb=max_upload_mb, cors_origins=tuple(cors_origins),
                     max_queue_wait_s=max_queue_wait)
    # access_log off: RequestLog writes the one line per request; log_config=None keeps faclip's format.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           server_header=False))
    failed: list[Exception] = []

    def load() -> None:
        try:
            retriever = Retriever(model_dir, vision_dir, index_dir, docstore_path, lexical_dir)
            # Load the vision model now (and check it is the one the text model was tuned against), so the
            # first photo query is not the slow one and a mismatch stops the server here.
            from PIL import Image

            grey = Image.new("RGB", (32, 32), (128, 128, 128))
            retriever.by_image(grey, k=1)
            retriever.by_text(WARM_UP_TEXT, k=1)
        except Exception as err:  # raised again below, once the server has closed the port
            failed.append(err)
            server.should_exit = True
            return
        # One more query of each kind, warm, measured: admission starts from this encoder's real speed.
        retriever.on_batch = app.state.admission.observe
        retriever.by_image(grey, k=1)
        retriever.by_text(WARM_UP_TEXT, k=1)
        if max_batch > 1:
            retriever.start_batching(max_batch=max_batch, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms)
        set_retriever(app, retriever)
        logger.info("ready: %d passages (%s, dim %d) on %s, batches of up to %d; http://%s:%d/",
                    retriever.index.ntotal, retriever.manifest["factory"], retriever.index.d, retriever.device,
                    max_batch, host, port)

    threading.Thread(target=load, name="faclip-load", daemon=True).start()
    server.run()
    if failed:
        raise failed[0]
