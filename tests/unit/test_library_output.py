"""Libraries' output during a step keeps its real level (no ERROR line for progress)."""

from __future__ import annotations

import logging
import sys

from fusion_model.library_output import quiet_step_output


def test_mlflow_progress_on_stderr_becomes_info_and_the_rest_a_warning(caplog):
    caplog.set_level(logging.INFO)
    with quiet_step_output():
        print("Successfully registered model 'fusion_products'.", file=sys.stderr)
        sys.stderr.write("Created version '2' of model 'fusion_products'.\nhalf a ")
        sys.stderr.write("line\n")
        print("\x1b[1;33mAn input example was not provided\x1b[0m", file=sys.stderr)
    levels = {r.getMessage(): r.levelname for r in caplog.records
              if r.name == "fusion_model.library_output"}
    assert levels["Successfully registered model 'fusion_products'."] == "INFO"
    assert levels["Created version '2' of model 'fusion_products'."] == "INFO"
    assert levels["half a line"] == "WARNING"
    assert levels["An input example was not provided"] == "WARNING"
    assert "ERROR" not in levels.values()


def test_library_info_chatter_is_dropped_but_warnings_and_ours_pass():
    root = logging.getLogger()
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(f"{record.name}:{record.levelname}")
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        with quiet_step_output():
            logging.getLogger("faiss.loader").info("Could not load library with AVX512")
            logging.getLogger("faiss.loader").warning("real trouble")
            logging.getLogger("fusion_model.pipelines").info("our progress")
            logging.getLogger("airflow.task").info("task started")
        logging.getLogger("faiss.loader").info("after the step: passes again")
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    assert seen == ["faiss.loader:WARNING", "fusion_model.pipelines:INFO",
                    "airflow.task:INFO", "faiss.loader:INFO"]
