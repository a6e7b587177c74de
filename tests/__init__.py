"""The test suite mirrors `src/wings/`: `tests/<package>/test_<module>.py` tests `wings/<package>/<module>.py`.

Beside that layout: `model/test_properties.py` (the properties docs/method.md requires of the model, each a test),
`model/test_bf16.py` (precision), `test_import_layers.py` (imports run one way), `benchmarks/` and `experiments/`
(their scripts run in seconds-long modes). What tests share is built in `fixtures/`; each folder's `conftest.py` turns
it into pytest fixtures.
"""
