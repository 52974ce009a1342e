"""Every bad input to the campaign / node / keys CLI is one line ``megbed: error: ...`` naming the problem, exit code
2, no traceback -- run through the real entry point (``megbed.testbed.cli.main.main`` in-process, or ``python -m
megbed.testbed.cli.main`` where the process itself matters)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from campaign_helpers import alias_bomb

from megbed.measurements.dataset import DatasetWriter
from megbed.testbed.campaign.runner import CampaignRunner
from megbed.testbed.campaign.spec import load_spec
from megbed.testbed.cli.main import main
from megbed.testbed.cli.run import run_dir_under

SPEC = """\
name: t
model: model
prompts: ["a cat"]
seeds: [0]
image: {height_px: 64, width_px: 64}
schemes: [meg]
grid: {n_steps: [2], merge_ratio: [0.0], distance_m: [200]}
"""


def one_line_error(capsys, argv: list[str], *must_contain: str) -> str:
    """Run the CLI; it must fail with exit code 2 and exactly one stderr line naming the problem."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("megbed: error: "), err
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


def cli_subprocess(argv: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megbed.testbed.cli.main", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.fixture
def spec_path(tmp_path, fake_model):
    path = tmp_path / "c.yaml"
    path.write_text(SPEC)
    return path


# --- campaign run --out ---------------------------------------------------------------------------------------------


def test_run_out_at_a_file(capsys, spec_path, tmp_path):
    target = tmp_path / "afile"
    target.write_text("mine")
    one_line_error(capsys, ["campaign", "run", spec_path, "--out", target, "--engine", "synthetic"],
                   str(target), "is a file")
    assert target.read_text() == "mine"


def test_run_out_under_a_file(capsys, spec_path, tmp_path):
    target = tmp_path / "afile"
    target.write_text("mine")
    one_line_error(capsys, ["campaign", "run", spec_path, "--out", target / "run", "--engine", "synthetic"],
                   "lies under", str(target))


def test_run_out_in_an_unwritable_place(capsys, spec_path, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the file system refuse instead
        real_mkdir = Path.mkdir

        def refuse(self, *a, **k):
            if locked in self.parents or self == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", refuse)
    else:
        locked.chmod(0o500)
    try:
        one_line_error(capsys, ["campaign", "run", spec_path, "--out", locked / "run", "--engine", "synthetic"],
                       "cannot create run directory", "Permission denied")
    finally:
        locked.chmod(0o700)


def test_run_never_overwrites_the_users_spec(capsys, tmp_path, fake_model):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "model").symlink_to(fake_model)
    spec = folder / "campaign.yaml"
    spec.write_text(SPEC)
    one_line_error(capsys, ["campaign", "run", spec, "--out", folder, "--engine", "synthetic"],
                   "campaign.yaml (your spec)", "choose another --out")
    assert spec.read_text() == SPEC
    assert not (folder / "manifest.json").exists()


def test_run_refuses_a_foreign_campaign_yaml_in_out(capsys, spec_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "campaign.yaml").write_text("# someone's notes\n")
    one_line_error(capsys, ["campaign", "run", spec_path, "--out", out, "--engine", "synthetic"], "already holds")
    assert (out / "campaign.yaml").read_text() == "# someone's notes\n"


# --- campaign resume on damaged runs --------------------------------------------------------------------------------


def _run_dir(tmp_path, spec_path) -> Path:
    """A run directory as `campaign run` leaves it (frozen spec, manifest) with one good part of rows."""
    spec = load_spec(spec_path)
    run = tmp_path / "run"
    CampaignRunner(spec, run, engine="synthetic", progress=False)._prepare_dir(resume=False)
    return run


def _good_part(run: Path) -> Path:
    from megbed.testbed.nodes import rows as R

    req = load_spec(run / "campaign.yaml").requests()[0]
    writer = DatasetWriter(run, rows_per_part=1000)
    writer.append(R.failed_row(req, "r", "LinkTimeout: test", 0, 1, extra={"model": "model"}))
    writer.close()
    (part,) = sorted((run / "dataset").glob("part-*.parquet"))
    return part


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "empty", "not_parquet"])
def test_resume_on_a_damaged_part(capsys, tmp_path, spec_path, damage):
    run = _run_dir(tmp_path, spec_path)
    part = _good_part(run)
    data = part.read_bytes()
    part.write_bytes({"truncated": data[: len(data) // 2], "corrupt": bytes(b ^ 0x5A for b in data), "empty": b"",
                      "not_parquet": b"request_id,stage,status\nx,end_to_end,ok\n"}[damage])
    line = one_line_error(capsys, ["campaign", "resume", run, "--engine", "synthetic"], "cannot resume", part.name)
    assert "move the damaged part" in line


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b'{"run_id": ', b"[1, 2]", b""])
def test_resume_on_a_damaged_manifest(capsys, tmp_path, spec_path, content):
    run = _run_dir(tmp_path, spec_path)
    (run / "manifest.json").write_bytes(content)
    one_line_error(capsys, ["campaign", "resume", run, "--engine", "synthetic"], "manifest.json")


def test_resume_on_a_folder_that_is_no_run(capsys, tmp_path):
    one_line_error(capsys, ["campaign", "resume", tmp_path, "--engine", "synthetic"], "not a campaign run directory")


# --- spec files -----------------------------------------------------------------------------------------------------


def test_non_utf8_spec(capsys, tmp_path, fake_model):
    path = tmp_path / "c.yaml"
    path.write_bytes(SPEC.encode().replace(b"a cat", b"a \xe9t\xe9 cat"))
    one_line_error(capsys, ["campaign", "check", path], "not UTF-8", "0xe9")


def test_prompts_file_pointing_at_a_binary(capsys, tmp_path, fake_model):
    blob = tmp_path / "prompts.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    path = tmp_path / "c.yaml"
    path.write_text(SPEC.replace('prompts: ["a cat"]', "prompts_file: prompts.bin"))
    one_line_error(capsys, ["campaign", "check", path], "prompts_file", "binary")
    latin = tmp_path / "prompts.txt"
    latin.write_bytes(b"caf\xe9 au lait\n")
    path.write_text(SPEC.replace('prompts: ["a cat"]', "prompts_file: prompts.txt"))
    one_line_error(capsys, ["campaign", "check", path], "prompts_file", "not UTF-8")


def test_prompts_file_that_is_a_directory(capsys, tmp_path, fake_model):
    (tmp_path / "prompts").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text(SPEC.replace('prompts: ["a cat"]', "prompts_file: prompts"))
    one_line_error(capsys, ["campaign", "check", path], "is a directory")


def test_directory_given_as_the_spec(capsys, tmp_path):
    one_line_error(capsys, ["campaign", "check", tmp_path], "is a directory")


def test_missing_spec(capsys, tmp_path):
    one_line_error(capsys, ["campaign", "check", tmp_path / "nope.yaml"], "does not exist")


def test_duplicate_keys_are_refused_naming_key_and_line(capsys, tmp_path, fake_model):
    path = tmp_path / "c.yaml"
    path.write_text(SPEC + "seeds: [1]\n")
    one_line_error(capsys, ["campaign", "check", path], "duplicate key 'seeds'", "line 8", "first on line 4")
    path.write_text(SPEC.replace("{height_px: 64, width_px: 64}", "{height_px: 64, height_px: 32}"))
    one_line_error(capsys, ["campaign", "check", path], "duplicate key 'height_px'")


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert len(path.read_bytes()) < 1000
    # A subprocess with a bound: before the fix this hung for minutes and wrote hundreds of MB to stderr.
    proc = cli_subprocess(["campaign", "check", path], timeout_s=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "expands to more than" in proc.stderr


def test_recursive_alias_is_refused(capsys, tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("a: &a [*a]\n")
    one_line_error(capsys, ["campaign", "check", path], "recursive alias")


@pytest.mark.parametrize("name", ["../../../X", "/tmp/X", "a/b", "..", ".hidden", "x" * 65, ""])
def test_run_names_are_confined(capsys, tmp_path, fake_model, name):
    path = tmp_path / "c.yaml"
    path.write_text(SPEC.replace("name: t", f"name: {json.dumps(name)}"))
    one_line_error(capsys, ["campaign", "check", path], "name:", "plain run name")
    runs = tmp_path / "runs"
    one_line_error(capsys, ["run", "--spec", path, "--runs", runs, "--engine", "synthetic", "--no-report",
                            "--no-policy"], "plain run name")
    assert not runs.exists() and not (tmp_path.parent / "X").exists()


def test_run_dir_under_is_a_backstop(tmp_path):
    assert run_dir_under(tmp_path, "20260101-000000-t") == tmp_path / "20260101-000000-t"
    for name in ("../x", "a/../../x", "..", "/etc"):
        with pytest.raises(Exception, match="outside --runs"):
            run_dir_under(tmp_path, name)


def test_megbed_run_with_model_and_a_non_mapping_spec(capsys, tmp_path, fake_model):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    one_line_error(capsys, ["run", "--spec", path, "--model", fake_model, "--engine", "synthetic"],
                   "must be a mapping")


# --- nodes and keys -------------------------------------------------------------------------------------------------


def test_node_es_port_in_use_is_reported_before_the_model_loads(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        # The model folder does not exist: had the node loaded it first, that would be the error.
        proc = cli_subprocess(["node", "es", "--bind", f"tcp://127.0.0.1:{port}", "--model", tmp_path / "none",
                               "--probe", "none", "--idle-s", "0"])
    finally:
        holder.close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"megbed: error: --bind tcp://127.0.0.1:{port}: cannot bind: "
                                                "the port is in use"]


@pytest.mark.parametrize("address", ["tcp://300.1.2.3:5555", "nonsense", "tcp://127.0.0.1:notaport"])
def test_node_bad_bind_address(capsys, tmp_path, address):
    for role in (["node", "es"], ["node", "ue", "--es", "tcp://127.0.0.1:1"]):
        one_line_error(capsys, [*role, "--bind", address, "--model", tmp_path / "none", "--probe", "none"],
                       f"--bind {address}", "cannot bind")


def test_keys_generate_into_an_unwritable_place(capsys, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(capsys, ["keys", "generate", afile / "keys"], "cannot write keys into")
    one_line_error(capsys, ["keys", "generate", afile], "cannot write keys into")
    import zmq.auth

    def refuse(directory, name, *a, **k):
        raise PermissionError(13, "Permission denied", str(Path(directory) / f"{name}.key"))

    monkeypatch.setattr(zmq.auth, "create_certificates", refuse)
    one_line_error(capsys, ["keys", "generate", tmp_path / "k"], "cannot write keys into", "Permission denied")


def test_keys_generate_twice_without_force(capsys, tmp_path):
    assert main(["keys", "generate", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["keys", "generate", tmp_path / "k"], "exists", "--force")


def test_spec_written_by_the_campaign_is_loadable_by_the_safe_loader(tmp_path, spec_path):
    run = _run_dir(tmp_path, spec_path)
    assert load_spec(run / "campaign.yaml").requests() == load_spec(spec_path).requests()
    assert textwrap.dedent((run / "campaign.yaml").read_text()).startswith("# frozen copy")


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "abc"])
def test_run_policy_seconds_is_checked_before_the_campaign(capsys, tmp_path, seconds):
    # Before, 0 or -1 ran the whole campaign and then trained one iteration as if asked for it.
    with pytest.raises(SystemExit) as exited:
        main(["run", "--out", str(tmp_path / "out"), "--policy-seconds", seconds])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--policy-seconds" in err and seconds in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
