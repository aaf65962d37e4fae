"""Helpers the test modules import (`from tests.testkit import ...`): kept out of conftest.py because two
conftest modules (tests/ and tests/browser/) cannot both be imported by the name `conftest`."""
import pytest
import torch

from pipelines.models import ModelConfig, build_model


def make_mlp(seed: int, precond: str = "edm"):
    """A randomly initialised 2-D MLP denoiser (distinct weights per seed)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="mlp", network={"dim": 2, "hidden": 32, "depth": 2}, precond=precond)
    return build_model(cfg).eval(), cfg


def scaled_demo_pair(scale: float = 1.02):
    """The bundled demo model and a distinct auxiliary: the same network with every weight times `scale`."""
    import copy

    from pipelines.checkpoints.native import load_model
    from pipelines.demo.assets import DEMO_MODEL
    base, _ = load_model(DEMO_MODEL)
    aux = copy.deepcopy(base)
    with torch.no_grad():
        for p in aux.parameters():
            p.mul_(scale)
    return base, aux



def pooled_studio(n_pool: int):
    """A module-scoped fixture for a database-facing test module: (studio, model_id) of studio.testing.tiny_studio
    with a labelled pool of n_pool samples, closed after the module. It takes `db_backend`, so it is built
    again on each database. Use: `world = pooled_studio(30)` at the module's top level."""
    @pytest.fixture(scope="module", name="world")
    def world(request, tmp_path_factory, db_backend):
        from studio.testing import tiny_studio
        folder = tmp_path_factory.mktemp(f"{request.module.__name__.rpartition('.')[2]}-{db_backend}")
        st, mid = tiny_studio(folder / "data", n_pool=n_pool)
        yield st, mid
        st.close()
    return world
