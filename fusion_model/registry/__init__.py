"""MLflow: training runs, pyfunc encoders, registry aliases, lineage and promotion audit."""
