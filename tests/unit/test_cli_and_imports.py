"""The CLI's catalog commands, and import-time hygiene of the package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_model.cli import main


def test_synthetic_then_show(tmp_path, capsys):
    out = tmp_path / "cat"
    assert main(["catalog", "synthetic", "--products", "50", "--seed", "1", "--out",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "products     50" in printed and "fingerprint" in printed
    assert main(["catalog", "show", str(out)]) == 0
    assert printed.splitlines()[-7:] == capsys.readouterr().out.splitlines()[-7:]


def test_bad_catalog_exits_2_with_the_reason(tmp_path, capsys):
    (tmp_path / "products.csv").write_text("product_id,title\na,x\na,y\n")
    assert main(["catalog", "show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "products.csv, rows 1, 2: product_id must be unique" in err


def test_import_is_light_and_side_effect_free(tmp_path):
    code = ("import sys, fusion_model, fusion_model.cli, fusion_model.data.catalog;"
            "heavy = [m for m in ('airflow', 'torch', 'mlflow', 'pymilvus', 'great_expectations')"
            " if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


def test_serve_rejects_a_port_outside_the_tcp_range(capsys):
    for port in ("0", "65536", "99999"):
        try:
            main(["serve", "--port", port])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"serve --port {port} was accepted")
        err = capsys.readouterr().err
        assert "--port" in err and ("1-65535" in err or "at least 1" in err), err


def test_serve_names_an_address_it_cannot_listen_on_before_loading_anything(tmp_path,
                                                                             capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port),
                     f"registry.tracking_uri=sqlite:///{tmp_path / 'never.db'}"]) == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
    # 192.0.2.1 is reserved for documentation: no machine has it
    assert main(["serve", "--host", "192.0.2.1", "--port", str(port),
                 f"registry.tracking_uri=sqlite:///{tmp_path / 'never.db'}"]) == 2
    assert "cannot serve on 192.0.2.1" in capsys.readouterr().err
    assert not (tmp_path / "never.db").exists()  # nothing was loaded or created


def test_search_output_never_sends_control_characters_to_the_terminal():
    from fusion_model.cli import format_hit

    shown = format_hit(1, {"product_id": "p1", "score": 0.5, "title": "Evil\x1b[2J\rTitle",
                           "colour": "red\x07", "image_uri": "/x/\x1b]0;pwned\x07.jpg"})
    assert not any(ord(c) < 32 and c != "\n" for c in shown)
    assert "Evil\\x1b[2J\\rTitle" in shown and "colour=red\\x07" in shown
    assert "Ünïcödé 衬衫" in format_hit(1, {"product_id": "p", "score": 0.1,
                                           "title": "Ünïcödé 衬衫"})


IMPORT_PROBE = """
import importlib.util, json, sys
sys.path.insert(0, 'plugins')
for target in sys.argv[1:]:
    if target.endswith('.py'):
        spec = importlib.util.spec_from_file_location('dag_under_test', target)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    else:
        importlib.import_module(target)
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in
      ('torch', 'transformers', 'mlflow', 'pymilvus', 'openvino')
      or m.startswith(('fusion_model.training', 'fusion_model.registry.tracking')))))
"""
REPO = Path(__file__).resolve().parents[2]


def loaded_by(*targets: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *targets], cwd=REPO,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dag", sorted(p.name for p in (REPO / "dags").glob("*.py")))
def test_parsing_a_dag_file_imports_nothing_heavy(dag):
    """The scheduler parses DAG files again and again: no torch, transformers, mlflow,
    pymilvus or training code at parse time."""
    assert loaded_by(f"dags/{dag}") == []


def test_the_search_service_imports_no_training_code():
    assert loaded_by("fusion_model.serving.app", "fusion_model.serving.searcher") == []


def test_a_switch_intent_fits_a_registry_tag_whatever_the_gate_reported():
    from fusion_model.pipelines.switch import SwitchIntent, intent_json

    metrics = {f"segment_{i}.ndcg@10": 0.123456789 for i in range(500)}
    intent = SwitchIntent("a" * 32, "fusion_products", "7", "7", "products_m7_x", None, "6",
                          {"decision": "promote", "reasons": ["r" * 2000] * 20,
                           "metrics": metrics})
    text = intent_json(intent)
    assert len(text) <= 5000  # the SQL stores' VARCHAR(5000)
    assert json.loads(text)["collection"] == "products_m7_x"
    small = SwitchIntent("b" * 32, "m", "1", "1", "c", None, None,
                         {"decision": "promote", "reasons": [], "metrics": {"ndcg@10": 0.9}})
    assert json.loads(intent_json(small))["entry"]["metrics"] == {"ndcg@10": 0.9}


def test_the_switch_holder_names_no_command_line_argument(monkeypatch):
    """The holder goes into the registry tag and the lock file: an override after the
    subcommand may hold a secret."""
    from fusion_model.pipelines import switch

    monkeypatch.setattr(sys, "argv", ["/venv/bin/fusion-model", "lifecycle",
                                      "index.token=root:s3cret", "--catalog", "x"])
    who = switch._who()
    assert "fusion-model lifecycle" in who and "s3cret" not in who and "/venv" not in who
