"""The README-commands check (`scripts/readme_commands.py`, issue 20): every command the README shows has a step
(run, adapted or skipped with a reason), the plan cannot drift from the README, and the runner runs steps in a
clone, inside the first step's venv, with a background server stopped at the end."""

import importlib.util
import json
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_commands", ROOT / "scripts" / "readme_commands.py")
rc = importlib.util.module_from_spec(spec)
sys.modules["readme_commands"] = rc
spec.loader.exec_module(rc)
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_check import free_port  # noqa: E402  (the scripts' one free-port helper)

FENCE = "```"


def test_every_readme_command_has_a_step():
    assert rc.check_plan((ROOT / "README.md").read_text()) == []
    assert all(s.why for s in rc.PLAN if s.mode != "run" or s.readme is None), "a skipped or adapted step says why"


def test_extract_joins_continuations_and_drops_comments():
    text = (f"intro\n{FENCE}bash\n# a comment\nrubric-rl train --config a.yaml \\\n    --seed 1   # why\n\n"
            f"echo  two   spaces\n{FENCE}\n{FENCE}\nnot bash\n{FENCE}\n{FENCE}python\nprint(1)\n{FENCE}\n")
    assert rc.extract(text) == [(4, "rubric-rl train --config a.yaml --seed 1"), (7, "echo two spaces")]


def test_a_new_readme_command_without_a_step_is_named_with_its_line():
    text = (ROOT / "README.md").read_text() + f"\n{FENCE}bash\nrubric-rl frobnicate --all\n{FENCE}\n"
    problems = rc.check_plan(text)
    line = len(text.splitlines()) - 1
    assert problems == [f"README.md:{line}: no step in scripts/readme_commands.py PLAN for: rubric-rl frobnicate --all"]


def test_a_step_whose_command_left_the_readme_is_named():
    plan = rc.PLAN + [rc.Step("rubric-rl gone --x", "run")]
    assert rc.check_plan((ROOT / "README.md").read_text(), plan) == ["PLAN step no longer in the README: rubric-rl gone --x"]


def test_the_runner_runs_steps_in_the_venv_and_stops_its_server(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    port = free_port()
    readme = (f"{FENCE}bash\nmkdir -p .venv/bin && echo 'export IN_VENV=yes' > .venv/bin/activate\n"
              f"echo $IN_VENV > inside.txt\nfalse\ncurl never\n"
              f"{sys.executable} -m http.server {port} --bind 127.0.0.1 &\n{FENCE}\n")
    plan = [rc.Step("mkdir -p .venv/bin && echo 'export IN_VENV=yes' > .venv/bin/activate", "run"),
            rc.Step("echo $IN_VENV > inside.txt", "run"),
            rc.Step("false", "run"),
            rc.Step("curl never", "skip", why="not here"),
            rc.Step(f"{sys.executable} -m http.server {port} --bind 127.0.0.1 &", "run", port=port),
            rc.Step(None, "adapted", run=f"{sys.executable} -c \"import urllib.request as u; "
                                         f"u.urlopen('http://127.0.0.1:{port}/inside.txt')\"", why="the server is up")]
    assert rc.check_plan(readme, plan) == []
    results = rc.run_plan(clone, tmp_path / "report", plan, readme_text=readme)
    assert [r.rc for r in results] == [0, 0, 1, None, 0, 0]
    assert (clone / "inside.txt").read_text().strip() == "yes"  # the second step ran inside the first one's venv
    assert [r.readme_line for r in results] == [2, 3, 4, 5, 6, None]
    assert results[4].background and results[4].extra["listening"] is True
    with socket.socket() as s:  # stopped when the plan ended
        assert s.connect_ex(("127.0.0.1", port)) != 0
    md = rc.format_report(results, {"command": "x", "commit": "c"})
    assert "**failed**" in md and "not here" in md and "5 of 6 steps" not in md
    assert "4 of 5 steps that ran exited 0; 1 not run" in md
    json.dumps([r.__dict__ for r in results])  # the report is JSON
