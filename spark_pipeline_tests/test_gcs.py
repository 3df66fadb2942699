"""Checkpoint upload and download against gcp-storage-emulator with the real client."""

import json
import threading
import time
from pathlib import Path

import pytest

from spark_pipeline.training.gcs import MARKER, CheckpointUploader, GCSError, download_checkpoint, make_client
from spark_pipeline_tests.gcs_emulator import Emulator


@pytest.fixture
def emulator(monkeypatch):
    emu = Emulator().start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)
    yield emu
    emu.stop()


def _checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4000)
    (folder / "optimizer.pt").write_bytes(b"o" * 300_000)
    (folder / "trainer_state.json").write_text('{"step": 4}')
    return folder


def _names(prefix):
    client = make_client()
    return sorted(b.name for b in client.list_blobs("spark-test", prefix=prefix))


def test_upload_verified_then_local_deleted_and_download_roundtrip(emulator, tmp_path):
    ckpt = _checkpoint(tmp_path / "checkpoint-4")
    uploader = CheckpointUploader("gs://spark-test/runs/r1", delete_local=True, backoff_s=0.05)
    status = uploader.submit(ckpt)
    uploader.close(timeout=60)
    assert status.state == "uploaded" and status.deleted_local and not ckpt.exists()
    assert _names("runs/r1/checkpoint-4") == sorted(f"runs/r1/checkpoint-4/{n}" for n in [
        "adapter_model.safetensors", "optimizer.pt", "trainer_state.json", MARKER])
    back = download_checkpoint("gs://spark-test/runs/r1/checkpoint-4", tmp_path / "back")
    assert (back / "adapter_model.safetensors").read_bytes() == bytes(range(256)) * 4000


def _down_for(emulator, seconds: float) -> None:
    """Stop the in-memory service (it loses everything it held) and start it again on the same
    port ``seconds`` later, in the background."""
    port = emulator.port
    emulator.stop()

    def come_back():
        time.sleep(seconds)
        emulator.port = port
        emulator.start()

    threading.Thread(target=come_back, daemon=True).start()


def test_storage_going_away_mid_upload_loses_no_checkpoint(emulator, tmp_path):
    ckpt = _checkpoint(tmp_path / "checkpoint-8")
    restarted = threading.Event()

    def kill_after_first_file(rel):
        if not restarted.is_set():
            restarted.set()
            _down_for(emulator, 1.0)  # everything uploaded so far is lost

    uploader = CheckpointUploader("gs://spark-test/runs/r2", delete_local=True, backoff_s=0.3, max_attempts=8,
                                  timeout_s=5, after_file=kill_after_first_file)
    status = uploader.submit(ckpt)
    uploader.close(timeout=120)
    assert restarted.is_set()
    assert status.state == "uploaded" and status.attempts > 1
    assert len(_names("runs/r2/checkpoint-8")) == 4, "every file was uploaded again after the loss"
    assert not ckpt.exists()


def test_unreachable_bucket_keeps_the_local_copy(emulator, tmp_path):
    ckpt = _checkpoint(tmp_path / "checkpoint-12")
    emulator.stop()
    uploader = CheckpointUploader("gs://spark-test/runs/r3", delete_local=True, backoff_s=0.01, max_attempts=2,
                                  timeout_s=2, request_retry_s=1)
    status = uploader.submit(ckpt)
    uploader.close(timeout=60)
    assert status.state == "failed" and status.attempts == 2 and status.error
    assert (ckpt / "optimizer.pt").exists(), "nothing is deleted unless the upload is verified"


def test_a_bucket_that_blinks_costs_a_request_retry_not_the_upload(emulator, tmp_path):
    """A request that fails while the service restarts is retried by the client library
    within the same attempt (the first request finds nothing listening for a second)."""
    ckpt = _checkpoint(tmp_path / "checkpoint-16")
    _down_for(emulator, 1.5)
    uploader = CheckpointUploader("gs://spark-test/runs/r5", delete_local=True, backoff_s=0.01, max_attempts=1,
                                  timeout_s=5, request_retry_s=120)
    status = uploader.submit(ckpt)
    uploader.close(timeout=180)
    assert status.state == "uploaded" and status.attempts == 1, status
    assert len(_names("runs/r5/checkpoint-16")) == 4


def test_incomplete_upload_is_not_downloaded(emulator, tmp_path):
    client = make_client()
    client.bucket("spark-test").blob("runs/r4/checkpoint-1/optimizer.pt").upload_from_string(b"x")
    with pytest.raises(GCSError, match="never completed"):
        download_checkpoint("gs://spark-test/runs/r4/checkpoint-1", tmp_path / "x", client)
    with pytest.raises(GCSError, match="not a gs:// URL"):
        CheckpointUploader("s3://bucket/x")


def test_sensor_finds_uploaded_checkpoints_and_evaluation_downloads_them(emulator, tmp_path, monkeypatch):
    from spark_pipeline.defs.evaluation import _checkpoint_path
    from spark_pipeline.defs.resources import SparkStorage
    from spark_pipeline.training.runs import bucket_checkpoints, mark_unhealthy_in_bucket

    run = "gs://spark-test/ckpts/hero/20261122-093015-a3f1"
    for step in (5, 7):
        ckpt = _checkpoint(tmp_path / f"checkpoint-{step}")
        (ckpt / "lineage.json").write_text(f'{{"step": {step}}}')
        uploader = CheckpointUploader(run, delete_local=True, backoff_s=0.05)
        uploader.submit(ckpt)
        uploader.close(timeout=60)
    incomplete = make_client().bucket("spark-test").blob(
        "ckpts/hero/20261122-093015-a3f1/checkpoint-9/optimizer.pt")
    incomplete.upload_from_string(b"half")  # no marker: never listed
    mark_unhealthy_in_bucket([f"{run}/checkpoint-7"], "diverged")  # never listed either
    found = bucket_checkpoints("gs://spark-test/ckpts")
    assert found == {"hero.20261122-093015-a3f1--checkpoint-5": f"{run}/checkpoint-5"}
    monkeypatch.setenv("SPARK_CHECKPOINT_URL", "gs://spark-test/ckpts")
    storage = SparkStorage(root=str(tmp_path / "storage"))
    local = _checkpoint_path(storage, "hero.20261122-093015-a3f1--checkpoint-5")
    assert (local / "lineage.json").read_text() == '{"step": 5}' and (local / "optimizer.pt").stat().st_size == 300_000
    import dagster as dg

    with pytest.raises(dg.Failure, match="not found"):
        _checkpoint_path(storage, "hero.20261122-093015-a3f1--checkpoint-7")


def _small_release(folder: Path, uploaded: str = "") -> Path:
    from spark_pipeline.release.build import UPLOADED, write_sums

    folder.mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n<!-- generated -->\n# spark-demo\n\nNumbers.\n")
    (folder / "release.json").write_text(json.dumps({"key": "k"}))
    (folder / "lineage.json").write_text(json.dumps({"mixture_hash": "m"}))
    write_sums(folder)
    if uploaded:
        (folder / UPLOADED).write_text(uploaded + "\n")
    return folder


def test_a_withdrawn_release_says_so_in_its_card_lineage_and_bucket(tmp_path, monkeypatch):
    """A release used to stay published when its checkpoint's evaluation was later blocked."""
    from spark_pipeline.release.build import WITHDRAWN, verify_sums, withdraw_release
    from spark_pipeline.training.gcs import make_client

    assert withdraw_release(tmp_path / "none", "x") is None, "no release, nothing to do"
    emu = Emulator().start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)
        out = _small_release(tmp_path / "rel", uploaded="gs://spark-test/releases/k")
        record = withdraw_release(out, "checkpoint k: the adapter did not load as trained")
        marker = make_client().bucket("spark-test").blob(f"releases/k/{WITHDRAWN}").download_as_text()
    finally:
        emu.stop()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense") and card.index("**WITHDRAWN**") < card.index("# spark-demo")
    assert "did not load as trained" in card
    for name in ("release.json", "lineage.json"):
        assert json.loads((out / name).read_text())["withdrawn"]["reason"] == record["reason"]
    assert json.loads(marker)["reason"] == record["reason"] and record["bucket"].startswith("marked gs://")
    assert verify_sums(out) == [], "the checksums cover the withdrawn card"
    before = (out / "README.md").read_bytes()
    assert withdraw_release(out, "again")["reason"] == record["reason"] and (out / "README.md").read_bytes() == before

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens there
    unreachable = withdraw_release(_small_release(tmp_path / "rel2", uploaded="gs://spark-test/releases/k2"), "y")
    assert "could not be marked" in unreachable["bucket"] and "withdraw it by hand" in unreachable["bucket"]
    assert (tmp_path / "rel2" / WITHDRAWN).exists()
