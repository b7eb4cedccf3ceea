"""A search in Keras Tuner's distributed mode: one chief, any number of workers.

The chief holds the oracle (and the search folder's lock) and serves trials
over gRPC; each worker asks it for a trial, trains it and reports the score.
The roles come from Keras Tuner's environment variables:

- `KERASTUNER_TUNER_ID`: `chief` for the chief, a unique name per worker;
- `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`: where the chief listens.

`python -m tuning ... --workers N` makes this machine the chief and starts N
worker processes on it (`LocalWorkers`), with the machine's cores split
between them. A worker that dies is started again with its name, and the
oracle hands it the trial it was running (`create_trial` returns a tuner's
ongoing trial); after `MAX_WORKER_RESTARTS` its trial is marked FAILED and
the search goes on. A chief that dies leaves the oracle's state in the
folder: the same command again reloads it, and the trials that were running
are run again (Keras Tuner's retry queue), none lost, none done twice.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from kd_keras.errors import SearchError
from kd_keras.search_folder import MAX_WORKERS

TUNER_ID = "KERASTUNER_TUNER_ID"
ORACLE_IP = "KERASTUNER_ORACLE_IP"
ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
CHIEF = "chief"
# A dead worker is started again this many times, then its trial fails.
MAX_WORKER_RESTARTS = 2
# Set in a local worker's environment: it stops when the chief is gone.
CHIEF_PID = "KD_TUNING_CHIEF_PID"


def role():
    """`None` (a search in one process), `"chief"` or `"worker"`, from
    Keras Tuner's environment variables.

    Raises:
        SearchError: `KERASTUNER_ORACLE_IP` is set without the port or the id.
    """
    if ORACLE_IP not in os.environ:
        return None
    missing = [name for name in (ORACLE_PORT, TUNER_ID) if not os.environ.get(name)]
    if missing:
        raise SearchError(
            f"{ORACLE_IP} is set but {' and '.join(missing)} is not; set "
            f"{TUNER_ID}=chief on the chief and a unique name on each worker, and "
            f"{ORACLE_PORT} on all of them (or unset {ORACLE_IP} for a one-process search)"
        )
    return CHIEF if CHIEF in os.environ[TUNER_ID] else "worker"


def worker_id():
    return os.environ.get(TUNER_ID, "tuner0")


def check_workers(workers):
    """Raises `SearchError` unless `workers` is None or an int in [1, 64]."""
    if workers is None:
        return None
    if not 1 <= workers <= MAX_WORKERS:
        raise SearchError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")
    return workers


def free_port():
    """A TCP port free on localhost now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def become_local_chief():
    """Sets this process's environment to be the chief on localhost."""
    os.environ[TUNER_ID] = CHIEF
    os.environ[ORACLE_IP] = "127.0.0.1"
    os.environ[ORACLE_PORT] = str(free_port())


def threads_per_worker(workers, threads=None):
    """The intra-op threads of each local worker: `threads` if given, else
    the machine's cores split evenly (at least 1)."""
    return threads or max(1, (os.cpu_count() or 1) // workers)


def watch_chief():
    """In a local worker: exits the process when its chief is gone (a chief
    killed leaves no worker waiting for it)."""
    chief = os.environ.get(CHIEF_PID)
    if not chief:
        return

    def watch():
        while True:
            time.sleep(1)
            if os.getppid() != int(chief):
                os._exit(1)

    threading.Thread(target=watch, name="watch-chief", daemon=True).start()


class LocalWorkers:
    """N worker processes on this machine, each `python -m tuning` with the
    chief's arguments and its own `KERASTUNER_TUNER_ID`.

    Args:
        argv: the worker's command-line arguments (without `--workers`,
            `--overwrite`).
        workers: how many.
        threads: intra-op threads of each worker.
    """

    def __init__(self, argv, workers, threads):
        self.argv = list(argv)
        self.names = [f"worker{i}" for i in range(1, workers + 1)]
        self.threads = threads
        self.processes = {}
        self.restarts = dict.fromkeys(self.names, 0)
        self.given_up = set()

    def _start(self, name):
        env = dict(os.environ, **{TUNER_ID: name, CHIEF_PID: str(os.getpid())})
        command = [sys.executable, "-m", "tuning", *self.argv, "--threads", str(self.threads)]
        self.processes[name] = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)

    def start(self):
        for name in self.names:
            self._start(name)

    def dead(self):
        """Names of the workers that ended with an error (or a signal)."""
        return [
            name
            for name, process in self.processes.items()
            if name not in self.given_up and process.poll() not in (None, 0)
        ]

    def restart_or_give_up(self, name):
        """Starts a dead worker again; returns False once it has been
        restarted `MAX_WORKER_RESTARTS` times (it is then left dead)."""
        if self.restarts[name] >= MAX_WORKER_RESTARTS:
            self.given_up.add(name)
            return False
        self.restarts[name] += 1
        print(
            f"tuning: worker {name} died (exit {self.processes[name].returncode}); "
            f"starting it again ({self.restarts[name]} of {MAX_WORKER_RESTARTS})",
            file=sys.stderr,
            flush=True,
        )
        self._start(name)
        return True

    def running(self):
        return [n for n, p in self.processes.items() if p.poll() is None]

    def stop(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def fail_trial_of(oracle, name, reason):
    """Ends the trial a worker `name` was running as FAILED (`reason` as its
    message) and forgets the worker, so the chief does not wait for it."""
    from keras_tuner.src.engine import trial as trial_module

    trial = oracle.ongoing_trials.get(name)
    if trial is not None:
        failed = trial_module.Trial(
            trial.hyperparameters.copy(), trial_id=trial.trial_id, status="FAILED"
        )
        failed.message = reason
        oracle.end_trial(failed)
    oracle.tuner_ids.discard(name)


def serve(tuner, *, on_trial_end, workers=None, poll_seconds=0.5):
    """Serves the tuner's oracle to the workers until every trial is done.

    Like Keras Tuner's `oracle_chief.start_server` (which `Tuner.search`
    calls on the chief), but it also calls `on_trial_end(trial_id,
    worker)` after each trial ends, supervises `workers` (a `LocalWorkers`,
    started once the server listens) and stops when no worker is left.

    Raises:
        SearchError: the port is taken.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    oracle = tuner.oracle
    end_trial = oracle.end_trial

    def recorded_end_trial(trial):
        worker = next(
            (t for t, on in oracle.ongoing_trials.items() if on.trial_id == trial.trial_id), None
        )
        end_trial(trial)
        # Saved again now that the trial is no longer ongoing (keras-tuner
        # saves before it removes it; see `tuners.drop_finished_retries`).
        oracle.save()
        on_trial_end(trial.trial_id, worker)

    oracle.end_trial = recorded_end_trial
    tuner.save()
    address = f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(address):
        raise SearchError(f"cannot listen on {address}; set {ORACLE_PORT} to a free port")
    server.start()
    print(f"tuning: chief serving trials on {address}", flush=True)
    try:
        if workers is not None:
            workers.start()
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll_seconds)
            if workers is None:
                continue
            for name in workers.dead():
                if not workers.restart_or_give_up(name):
                    fail_trial_of(
                        oracle, name, f"worker {name} died {MAX_WORKER_RESTARTS + 1} times"
                    )
            if not workers.running() and not servicer.stop_triggered:
                break  # Every worker gave up: nothing can finish the search.
    finally:
        if workers is not None:
            workers.stop()
        server.stop(grace=1)
        oracle.end_trial = end_trial
