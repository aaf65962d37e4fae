"""Model registry, first-run bootstrap and upload checks."""
import pytest

from pipelines.errors import UserError
from studio.core import open_studio
from studio.jobs.specs import ImportModelSpec
from studio.services import attributes, registry
from studio.settings import Settings
from studio.testing import make_tiny_model, run_now

# every test here runs on SQLite and on PostgreSQL (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("db_backend")


@pytest.fixture
def studio(tmp_path):
    st = open_studio(Settings(data_dir=tmp_path / "data"), start_runner=False)
    yield st
    st.close()


def test_first_run_registers_classifier_and_digits_groupings_idempotently(tmp_path):
    for _ in range(2):  # a second start must not duplicate anything
        st = open_studio(Settings(data_dir=tmp_path / "data"), start_runner=False)
        names = [g["name"] for g in attributes.list_groupings(st.db, "digits")]
        clfs = attributes.list_classifiers(st.db)
        st.close()
    assert [c["name"] for c in clfs] == ["digits"] and clfs[0]["classes"] == [str(d) for d in range(10)]
    assert names[0] == "digits 0-4 vs 5-9" and "all ten digits" in names
    assert sum(n.startswith("digit=") for n in names) == 10 and len(names) == 12


def test_register_checkpoint_copies_into_data_dir_and_dedupes(studio, tmp_path):
    src = make_tiny_model(tmp_path / "m.safetensors")
    a = registry.register_checkpoint(studio.db, studio.settings, src, name="mine")
    b = registry.register_checkpoint(studio.db, studio.settings, src, name="again")
    assert a == b
    card = registry.card(studio.db, a)
    assert card.backbone == "songunet" and card.resolution == 8 and card.channels == 1
    assert studio.settings.abs(card.path).is_file() and card.path.startswith("models/")


def test_pickles_and_missing_files_get_actionable_messages(studio, tmp_path):
    (tmp_path / "net.pkl").write_bytes(b"\x80\x04not really")
    with pytest.raises(UserError, match="import-edm"):
        registry.register_checkpoint(studio.db, studio.settings, tmp_path / "net.pkl")
    with pytest.raises(UserError, match="No file at"):
        registry.submit_import(studio.db, studio.settings, str(tmp_path / "nothing.pkl"))
    with pytest.raises(UserError, match="path or an http"):
        registry.submit_import(studio.db, studio.settings, "  ")


def test_unreachable_checkpoint_url_fails_with_a_clear_message(studio):
    job = registry.submit_import(studio.db, studio.settings, "http://127.0.0.1:9/edm-ffhq-64x64-uncond-vp.pkl")
    view = run_now(studio, job)
    assert view.state == "failed"
    # loopback is refused before any connection (SSRF guard); tests/test_ssrf.py covers the allowed case
    assert "Refused to download http://127.0.0.1:9/edm-ffhq-64x64-uncond-vp.pkl" in view.message
    assert "--allow-private-urls" in view.message and "local path" in view.message


def test_uploads_are_checked(studio, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("not a png at all")
    mid = registry.register_checkpoint(studio.db, studio.settings, make_tiny_model(tmp_path / "m.safetensors"))
    with pytest.raises(UserError, match="notes.txt is not an image file"):
        registry.set_reference_images(studio.db, studio.settings, mid, [str(bad)])
    with pytest.raises(UserError, match="fake.png is not a readable image"):
        registry.set_reference_images(studio.db, studio.settings, mid, [str(fake_png)])
    with pytest.raises(UserError, match="upload a .safetensors checkpoint or an EDM .pkl"):
        registry.register_upload(studio.db, studio.settings, str(bad))
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"0" * (2 * 2 ** 20))
    small = Settings(data_dir=tmp_path / "data", max_upload_mb=1)
    with pytest.raises(UserError, match="limit is 1 MB"):
        registry.register_upload(studio.db, small, str(big))


def test_reference_images_upload_roundtrip(studio, tmp_path):
    import numpy as np
    from PIL import Image
    files = []
    for i in range(3):
        p = tmp_path / f"r{i}.png"
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(p)
        files.append(str(p))
    mid = registry.register_checkpoint(studio.db, studio.settings, make_tiny_model(tmp_path / "m.safetensors"))
    assert registry.set_reference_images(studio.db, studio.settings, mid, files) == 3
    assert (studio.settings.path("reference", f"m{mid}", "dataset.json")).exists()


def test_fake_uploads_get_messages_naming_the_file_not_the_server_path(studio, tmp_path):
    from PIL import Image
    tmp = tmp_path / "gradio" / "3f2a9c"
    tmp.mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp / "x.png")
    (tmp / "x.png").rename(tmp / "model.safetensors")
    with pytest.raises(UserError) as e:
        registry.register_upload(studio.db, studio.settings, tmp / "model.safetensors")
    assert "model.safetensors is not a checkpoint" in str(e.value) and str(tmp) not in str(e.value)
    (tmp / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(UserError) as e:
        registry.set_reference_images(studio.db, studio.settings, registry.register_demo(studio.db, studio.settings),
                                      [str(tmp / "bad.png")])
    assert "bad.png" in str(e.value) and "_io.BytesIO" not in str(e.value) and "PNG/JPEG" in str(e.value)


def test_url_import_that_never_answers_shows_waiting_then_times_out(studio, monkeypatch):
    import socket
    import threading
    from pipelines.checkpoints import download
    from studio.services import jobs
    monkeypatch.setattr(download, "TIMEOUT_S", 3)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    held = []
    threading.Thread(target=lambda: held.append(srv.accept()), daemon=True).start()  # accepts, never answers
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/model.pkl"
    job = jobs.submit(studio.db, ImportModelSpec(src=url, allow_private_urls=True))
    seen, stop = [], threading.Event()

    def watch():  # what the job's panel shows while it runs
        while not stop.wait(0.3):
            seen.append(jobs.get(studio.db, job).message)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    view = run_now(studio, job)
    stop.set()
    watcher.join()
    srv.close()
    assert any("waiting for" in m and "gives up after 3 s" in m for m in seen), seen
    assert view.state == "failed"
    assert "did not answer within 3 s" in view.message and "download the file by hand" in view.message
