"""`dtb serve --ray-replicas N`: the HTTP app of `serving.create_app` as N Ray Serve replicas behind one port.

Each replica is a Ray actor that loads the model once and runs the very app `dtb serve` runs (same endpoints,
request and answer shapes, limits and errors, lifespan included); Ray Serve's proxy spreads requests over
the replicas. The app is built in the replica by one call to `create_app`, so whatever the app does, the
replicas do. Ray is imported only when replicas are started.
"""

from __future__ import annotations

from .scale_out import start_ray
from .serving.settings import ServerSettings

DEPLOYMENT = "dtb"


class AnswerReplica:
    """One replica: the model, loaded once, and the HTTP app answering with it."""

    def __init__(
        self,
        model: str,
        revision: str | None,
        device: str,
        precision: str,
        engine: str,
        threads: int,
        name: str,
        defaults: dict,
        settings: ServerSettings,
    ) -> None:
        import torch

        from .pipeline import QuestionAnswerer
        from .runtime import bound_kernel_caches

        bound_kernel_caches()  # as `dtb serve` does, before the first forward pass
        torch.set_num_threads(threads)
        self.qa = QuestionAnswerer.from_pretrained(
            model, revision=revision, device=device, precision=precision, engine=engine, **defaults
        )
        self.name = name
        self.settings = settings

    def __serve_build_asgi_app__(self):
        """Ray Serve's hook: the ASGI app this replica serves, built after the model is loaded."""
        from .serving import create_app

        return create_app(self.qa, name=self.name, settings=self.settings)


def start_replicas(
    model: str,
    replicas: int,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    revision: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    engine: str = "auto",
    threads_per_replica: int = 1,
    address: str | None = None,
    name: str | None = None,
    settings: ServerSettings | None = None,
    **defaults,
) -> None:
    """Deploy `replicas` replicas answering on http://host:port/ and return once they all answer.

    Starts a local Ray instance (`address` None) or joins the cluster at `address`. `defaults` are the
    answering options every request gets unless it sets its own, and `settings` the batching and limits of
    each replica, as `dtb serve` takes them. `stop_replicas` ends them.
    """
    import ray
    from ray import serve

    if replicas < 1 or threads_per_replica < 1:
        raise ValueError(f"replicas and threads_per_replica must be >= 1, got {replicas} and {threads_per_replica}")
    if not ray.is_initialized():
        start_ray(address)
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "ERROR"})
    deployment = serve.deployment(
        serve.ingress()(AnswerReplica),
        name=DEPLOYMENT,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": threads_per_replica, "num_gpus": 1 if device.startswith("cuda") else 0},
    )
    app = deployment.bind(
        model=str(model),
        revision=revision,
        device=device,
        precision=precision,
        engine=engine,
        threads=threads_per_replica,
        name=name or str(model),
        defaults=defaults,
        settings=settings or ServerSettings(),
    )
    serve.run(app, name=DEPLOYMENT, route_prefix="/", blocking=False)


def running_replicas() -> int:
    """How many replicas of the deployment are up and answering."""
    from ray import serve

    application = serve.status().applications.get(DEPLOYMENT)
    if application is None:
        return 0
    return sum(deployment.replica_states.get("RUNNING", 0) for deployment in application.deployments.values())


def stop_replicas() -> None:
    """Shut the replicas, and Ray Serve, down."""
    from ray import serve

    serve.shutdown()
