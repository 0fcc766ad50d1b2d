"""Credentials planted in every URL that can carry them - the S3 endpoint, the Pushgateway, a DVC
remote, a source's image URLs - are used where they are meant for (S3 keys, basic auth) and
appear nowhere else: not in what any command prints, not in the run log, the metrics, the
outputs, the committed DVC config or DVC's own state. Real servers on loopback: a moto S3 server,
the Pushgateway behind basic auth, an HTTP image server."""

from __future__ import annotations

import csv
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cmrops import versioning
from tests.http_fault_server import FaultServer, jpeg
from tests.reliability.harness import (
    MotoServer,
    cmrops,
    copy_project,
    free_port,
)

PUSHGATEWAY = Path("/usr/bin/prometheus-pushgateway")
S3_KEY, S3_SECRET = "AKIA-cred-SECRET-1", "s3-SECRET-2"
GW_USER, GW_PASSWORD = "gwuser", "gw-SECRET-3"
#: bcrypt (cost 4) of GW_PASSWORD, as the Pushgateway's web config wants it (made once with
#: ``crypt.crypt(GW_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))``)
GW_BCRYPT = "$2b$04$H0UYLUNpRUdYIZYF50Divu1P5bNNdubhK2Hrt/Ys7U8xNSsQ2ICE."
IMAGE_SECRET, REMOTE_SECRET, WRONG_SECRET = "img-SECRET-4", "remote-SECRET-5", "wrong-SECRET-6"
SECRETS = (S3_KEY, S3_SECRET, GW_PASSWORD, IMAGE_SECRET, REMOTE_SECRET, WRONG_SECRET)


@pytest.fixture
def gateway(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The Pushgateway on loopback, every request behind basic auth."""
    if not PUSHGATEWAY.is_file():
        pytest.fail(f"{PUSHGATEWAY} not found: run scripts/system_packages.sh")
    config = tmp_path / "web.yml"
    config.write_text(yaml.safe_dump({"basic_auth_users": {GW_USER: GW_BCRYPT}}))
    port = free_port()
    proc = subprocess.Popen(
        [str(PUSHGATEWAY), f"--web.listen-address=127.0.0.1:{port}",
         f"--web.config.file={config}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60  # it answers 401 to anonymous probes: wait for the port
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "pushgateway exited"
            assert time.monotonic() < deadline, "pushgateway did not listen within 60 s"
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=20)


def test_planted_credentials_are_used_and_never_shown(
    dvc_project, gateway, tmp_path, monkeypatch
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)  # the keys come from the URLs only
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    project = copy_project(dvc_project, tmp_path / "p")
    moto = MotoServer(tmp_path)
    moto.start()
    said: list[str] = []  # everything every command printed

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = cmrops(*args, cwd=project, extra_env=env)
        said.append(done.stdout + done.stderr)
        return done

    try:
        endpoint = f"http://{S3_KEY}:{S3_SECRET}@127.0.0.1:{moto.port}"
        # 1. storage check with the endpoint's own credentials
        done = cli("storage", "check", "--url", "s3://creds/check", CMROPS_S3_ENDPOINT_URL=endpoint)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"at http://***@127.0.0.1:{moto.port}" in done.stdout, done.stdout
        # 2. a DVC remote configured with them: keys split off into config.local only
        versioning.configure_remote(project, "secured", "s3://creds/dvc", endpoint=endpoint)
        done = cli("storage", "check", "--remote", "secured")
        assert done.returncode == 0, done.stdout + done.stderr
        said.append(versioning.push(project, "secured"))  # authenticates with config.local
        # an HTTP remote with credentials in its URL: user/password into config.local
        versioning.configure_remote(
            project, "web", f"https://webuser:{REMOTE_SECRET}@127.0.0.1:1/dvc"
        )
        done = cli("storage", "check", "--remote", "web")
        assert done.returncode == 1  # not a storage root cmrops reads: said in one line
        local = (project / ".dvc/config.local").read_text()
        assert all(s in local for s in (S3_KEY, S3_SECRET, REMOTE_SECRET)), local
        # 3. a URL source whose image URLs carry credentials (never sent, never kept)
        with FaultServer() as images:
            images.add("/a.jpg", body=jpeg(7))
            image_url = images.url("/a.jpg").replace("http://", f"http://img:{IMAGE_SECRET}@")
            with (project / "urls.csv").open("w", newline="") as fh:
                csv.writer(fh).writerows([("url", "captions"), (image_url, "a red square")])
            params = yaml.safe_load((project / "params.yaml").read_text())
            params["collect"]["sources"].append(
                {"name": "web", "kind": "urls", "path": "urls.csv",
                 "download": {"allowed_networks": ["127.0.0.0/8"], "timeout": 5}}
            )  # fmt: skip
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            # 4. a stage whose metrics push fails: the warning every stage logs
            closed = f"http://{GW_USER}:{GW_PASSWORD}@127.0.0.1:{free_port()}"
            done = cli("collect", "--params", "params.yaml", "--out", "data/raw",
                       CMROPS_PUSHGATEWAY_URL=closed)  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            assert "metrics not pushed" in done.stderr
            assert images.requests["/a.jpg"] == 1
        # 5. metrics push to the gateway behind basic auth: works, shown without the password
        gw = f"http://{GW_USER}:{GW_PASSWORD}@127.0.0.1:{gateway}"
        done = cli("metrics", "push", "--project", ".", CMROPS_PUSHGATEWAY_URL=gw)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"to http://***@127.0.0.1:{gateway}" in done.stdout
        wrong = f"http://{GW_USER}:{WRONG_SECRET}@127.0.0.1:{gateway}"
        done = cli("metrics", "push", "--project", ".", "--gateway", wrong)
        assert done.returncode == 1
        assert "Unauthorized" in done.stdout + done.stderr  # refused, and said so
    finally:
        moto.stop()

    leaks = [
        (where, s)
        for where, text in [*((f"output {i}", t) for i, t in enumerate(said)), *_files(project)]
        for s in SECRETS
        if s in text
    ]
    assert leaks == []
    samples = (project / "data/raw/samples.parquet").read_bytes()
    assert b"http://***@127.0.0.1" in samples  # the URL source's key, masked


def _files(project: Path) -> list[tuple[str, str]]:
    """Every file cmrops or dvc wrote in the project, as text: outputs, metrics, run log, DVC's
    committed config, cache and state. Left out: the secrets' proper home (config.local), the
    manifest the user wrote, and git's compressed objects."""
    out = []
    for f in sorted(p for p in project.rglob("*") if p.is_file()):
        rel = f.relative_to(project).as_posix()
        if rel.startswith((".git/", "cmrops/", "dags/")) or rel in (
            ".dvc/config.local",
            "urls.csv",
        ):
            continue
        out.append((rel, f.read_bytes().decode("utf-8", "replace")))
    return out
