"""Exceptions with messages that say what broke and how to fix it."""

from __future__ import annotations


class FusionModelError(Exception):
    """Base class of every error this package raises on purpose."""


class BadInputError(FusionModelError):
    """Bad data, configuration or arguments: running the same step again cannot succeed
    (Airflow tasks fail at once instead of retrying)."""


class StorageError(FusionModelError):
    """A path or object URI cannot be read or written."""


class UnsupportedURIError(StorageError, BadInputError):
    """A URI scheme other than a local path or s3:// (http://, gs://, ...)."""


class CatalogError(BadInputError):
    """A catalog file breaks the catalog format contract.

    The message names the file, the offending rows (1-based data rows, as a
    spreadsheet shows them below the header) and the rule that was broken.
    """

    def __init__(self, file: str, rule: str, rows: list[int] | None = None, detail: str = ""):
        self.file = file
        self.rule = rule
        self.rows = list(rows or [])
        self.detail = detail
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:10])
            more = f" (+{len(self.rows) - 10} more)" if len(self.rows) > 10 else ""
            where += f", row{'s' if len(self.rows) > 1 else ''} {shown}{more}"
        message = f"{where}: {self.rule}"
        return f"{message}: {self.detail}" if self.detail else message


class NoChampionError(FusionModelError):
    """A step needs a promoted model and there is none yet."""

    def __init__(self, model_name: str):
        super().__init__(f"no champion for {model_name} yet: train and promote a model first "
                         "(`fusion-model lifecycle --catalog DIR` or the training DAG)")


class ServingSwitchError(FusionModelError):
    """Moving the serving alias and the champion together failed; both were put back."""


class ServingMismatchError(FusionModelError):
    """The serving alias and the champion's recorded collection disagree."""


class RegistryUnavailableError(FusionModelError):
    """The MLflow tracking server or store cannot be reached or written."""


class IndexUnavailableError(FusionModelError):
    """Milvus cannot be reached, opened or written."""


class UnknownVersionError(BadInputError):
    """A model version that the registry does not hold."""

    def __init__(self, model_name: str, version: str, known: list[str]):
        listed = ", ".join(known) if known else "none: nothing is registered yet"
        super().__init__(f"{model_name} has no version {version} in the registry "
                         f"(versions: {listed})")


class VectorIndexError(FusionModelError):
    """An index operation was refused or is unsafe (any backend)."""


class InvalidFilterError(BadInputError):
    """A search filter that Milvus cannot parse or that names an unknown field."""

    def __init__(self, expression: str, reason: str, fields: list[str], example: str = ""):
        listed = "filterable fields" in reason or not fields
        super().__init__(f"invalid filter {expression!r}: {reason}"
                         + ("" if listed else f". Filterable fields: {', '.join(fields)}")
                         + (f"; example: {example}" if example else ""))


def _type_names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__.split('.')[0]}.{cls.__name__}" for cls in type(exc).__mro__}


def explain(exc: BaseException) -> str:
    """One line for the user: what failed and where, for this package's errors and those
    of the libraries it drives (Milvus, MLflow, S3, the file system, the network, PIL)."""
    names = _type_names(exc)
    message = str(exc).strip()
    if isinstance(exc, FusionModelError | ValueError):
        return message or type(exc).__name__
    if "pymilvus.MilvusException" in names:
        detail = getattr(exc, "message", "") or message
        return f"Milvus refused the request: {detail} (code {getattr(exc, 'code', '?')})"
    if "mlflow.MlflowException" in names:
        detail = getattr(exc, "message", "") or message
        return f"MLflow: {detail.splitlines()[0] if detail else type(exc).__name__}"
    if names & {"botocore.ClientError", "botocore.BotoCoreError"}:
        return f"S3: {message}"
    if names & {"requests.RequestException", "urllib3.HTTPError"}:
        return f"network: {message}"
    if "yaml.YAMLError" in names:
        return f"YAML: {message}"
    if isinstance(exc, OSError):
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        reason = exc.strerror or message or type(exc).__name__
        return f"{where}: {reason}" if where else reason
    return f"unexpected {type(exc).__name__}: {message}"
