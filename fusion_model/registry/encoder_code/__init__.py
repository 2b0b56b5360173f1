"""Models-from-code files for MLflow: each defines one encoder with ``set_model``, so a
logged encoder holds no pickle (``mlflow.pyfunc.load_model`` runs this code, from the
package, instead of unpickling an object)."""
