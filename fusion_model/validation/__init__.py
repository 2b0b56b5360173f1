"""Data validation: Great Expectations suites, image integrity and drift checks."""

from fusion_model.validation.runner import (
    DataValidationError,
    ValidationReport,
    ValidationSettings,
    validate_catalog,
)

__all__ = ["DataValidationError", "ValidationReport", "ValidationSettings", "validate_catalog"]
