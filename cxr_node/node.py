"""Assembles receiver, queue, worker and dispatcher from a NodeConfig, and runs them together."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cxr_node.analysis.bundle import Bundle, BundleError, load_bundle, untrained_bundle
from cxr_node.analysis.engine import Analyzer
from cxr_node.config import ConfigError, NodeConfig
from cxr_node.decoding.pool import DecodeLimits, DecodePool, decoder_for
from cxr_node.decoding.reduced import Resolution
from cxr_node.destinations.registry import build_destinations
from cxr_node.destinations.routing import routes
from cxr_node.dicom.receiver import Receiver, ReceiverSettings
from cxr_node.dispatcher import Dispatcher, ExportPolicy
from cxr_node.events import notifier_for
from cxr_node.housekeeping import Housekeeping
from cxr_node.queue.exports import ExportQueue
from cxr_node.queue.jobs import JobQueue
from cxr_node.queue.schema import open_database
from cxr_node.results.identity import NodeIdentity
from cxr_node.results.wording import UNTRAINED_MODEL_TEXT
from cxr_node.startup import check_storage, wait_for_database, with_db_password
from cxr_node.storage import StorageLayout
from cxr_node.worker import Worker, WorkerSettings

log = logging.getLogger(__name__)


def load_models(cfg: NodeConfig) -> Bundle:
    """The configured bundle, or random weights when explicitly allowed; otherwise refuse to start."""
    if cfg.models is not None:
        try:
            return load_bundle(cfg.models)
        except BundleError as exc:
            raise ConfigError(f"models.dir: {exc}") from exc
    if cfg.allow_untrained:
        log.warning("no model bundle: using RANDOM weights; every result will say %s", UNTRAINED_MODEL_TEXT)
        return untrained_bundle(cfg.input_size)
    raise ConfigError(
        "models.dir: no model bundle configured (--models DIR); "
        "pass --allow-untrained to run with random weights for testing"
    )


def decode_resolution(cfg: NodeConfig, model_side: int) -> Resolution | None:
    """What the worker's decoder must resolve: the model input and the SC panel (None: full)."""
    return Resolution.serving(model_side, cfg.sc_max_side) if cfg.reduced_decode else None


@dataclass
class Node:
    """The roles of one process. All four by default; split them across processes or hosts with
    `serve --role`, since they talk to each other only through the database and the storage dir."""

    config: NodeConfig
    queue: JobQueue
    receiver: Receiver | None
    worker: Worker | None
    dispatcher: Dispatcher | None
    housekeeping: Housekeeping | None
    decode_pool: DecodePool | None = None

    @classmethod
    def build(cls, cfg: NodeConfig, bundle: Bundle | None = None) -> Node:
        roles = set(cfg.roles)
        layout = StorageLayout(cfg.storage)
        layout.ensure()
        # A fresh database is created; one behind the code is refused (SchemaError names `db upgrade`).
        engine = open_database(cfg.db_url)
        # Wake-up signals: in-process, plus NOTIFY/LISTEN when several processes share PostgreSQL.
        notifier = notifier_for(engine)
        queue = JobQueue(engine, notifier=notifier)
        receiver = worker = dispatcher = housekeeping = None
        pool = None
        if "receiver" in roles:
            receiver = Receiver(ReceiverSettings.from_config(cfg), queue, layout, selection=cfg.selection)
        if "worker" in roles:  # only a worker needs the models (and the GPU)
            models = bundle or load_models(cfg)
            # Decoding in other processes: OpenJPEG holds the GIL, and an image that exhausts its
            # process's memory limit or kills it fails alone (cxr_node.decoding.pool).
            # Each decodes only as finely as the model and the SC need (decode_resolution).
            pool = DecodePool(
                cfg.decode_processes or None,
                kind="process",
                limits=DecodeLimits(memory_mb=cfg.decode_memory_mb, timeout_s=cfg.decode_timeout_s),
                decode=decoder_for(decode_resolution(cfg, models.input_size)),
            )
            analyzer = Analyzer(
                models,
                cfg.device,
                cuda_graphs=cfg.cuda_graphs,
                domain_check=cfg.domain_check,
                domain_threshold=cfg.domain_threshold,
            )
            log.info("%s", analyzer.domain_status)
            worker = Worker(
                queue,
                analyzer,
                layout,
                NodeIdentity(cfg.ae_title),
                WorkerSettings(
                    lease_s=cfg.lease_s,
                    max_attempts=cfg.max_attempts,
                    batch_size=cfg.batch_size,
                    poll_interval_s=cfg.poll_interval_s,
                    cam_panels=cfg.cam_panels,
                    sc_max_side=cfg.sc_max_side,
                    time_zone=cfg.time_zone,
                    destinations=routes(cfg),
                    image_check=cfg.image_check,
                    vocabulary=cfg.selection.vocabulary,
                    not_analysable_report=cfg.not_analysable_report,
                ),
                pool.decode_many,
            )
        if "dispatcher" in roles and cfg.destination_specs:
            policy = ExportPolicy(cfg.send_retry_s, cfg.send_max_attempts, cfg.send_give_up_after_s)
            dispatcher = Dispatcher(
                ExportQueue(engine, notifier=notifier), build_destinations(cfg), policy, cfg.poll_interval_s
            )
        if "housekeeping" in roles:
            housekeeping = Housekeeping(queue, layout, cfg.retention_days, cfg.housekeeping_interval_s)
        if worker is not None:
            notifier.subscribe("jobs", worker.wake)
        if dispatcher is not None:
            notifier.subscribe("exports", dispatcher.wake)
        return cls(cfg, queue, receiver, worker, dispatcher, housekeeping, pool)

    @classmethod
    def run(cls, cfg: NodeConfig, stop: threading.Event, say: Callable[[str], None]) -> None:
        """Start-up in one place, for `serve`: run the configured roles until `stop` is set.

        Order matters: umask before anything is created (images, results, SQLite 0640, dirs
        0750); the storage probed and the database reached before the node is built; the receiver
        listens only once everything behind it runs. What an operator must fix is raised as one
        line (ConfigError naming the key, SchemaError naming `cxr-node db upgrade`, RuntimeError
        for a status page that cannot listen); `say` gets the lines that are not fatal.
        """
        from cxr_node.memory import tune_malloc
        from cxr_node.results.writer import start_warm_up
        from cxr_node.web.wiring import build_web_server

        os.umask(cfg.umask)
        cfg = with_db_password(cfg, os.environ)
        warning = check_storage(cfg.storage, cfg.min_free_mb)
        if warning:
            say(warning)
        if not wait_for_database(cfg.db_url, stop, say):
            return  # stopped while waiting for the database
        if "worker" in cfg.roles:  # process-wide malloc settings of an analysis process, before the models load
            tune_malloc()
        node = cls.build(cfg)
        if node.worker is not None:  # highdicom's tables load now, not on the first radiograph
            start_warm_up()
        node.start()
        web = build_web_server(node)
        try:
            if web is not None:
                web.start()
        except RuntimeError:
            node.stop()
            raise
        say("cxr-node: " + node.describe(web.port if web is not None else None))
        try:
            stop.wait()
        finally:
            if web is not None:
                web.stop()
            node.stop()

    def describe(self, web_port: int | None) -> str:
        """One line: roles, where it listens, the models, where results go, the status page."""
        cfg = self.config
        parts = [f"roles {', '.join(cfg.roles)}"]
        if self.receiver:
            ports = [str(self.receiver.port)] if self.receiver.port is not None else []
            if self.receiver.tls_port is not None:
                ports.append(f"{self.receiver.tls_port} (TLS)")
            parts.append(f"listening as {cfg.ae_title} on {cfg.bind}:{' and '.join(ports)}")
        if self.worker:
            model = self.worker.model
            parts.append(f"models {model.label}{'' if model.trained else f' ({UNTRAINED_MODEL_TEXT})'}")
        parts.append(f"results to {', '.join(cfg.destination_names) or 'disk only'}")
        if web_port is not None:
            parts.append(f"status page http://{cfg.web_bind}:{web_port}/")
        return "; ".join(parts)

    def _parts(self):
        # Worker and dispatcher first: anything left queued by a previous run starts moving at once;
        # the receiver last, so nothing is accepted before the rest is up.
        return [p for p in (self.worker, self.dispatcher, self.housekeeping, self.receiver) if p is not None]

    def start(self) -> None:
        self.queue.notifier.start()
        if self.decode_pool is not None:
            self.decode_pool.start()
        for part in self._parts():
            part.start()

    def stop(self) -> None:
        for part in reversed(self._parts()):
            part.stop()
        if self.decode_pool is not None:
            self.decode_pool.close()
        self.queue.notifier.stop()
