"""The suite's torch threads sleep between parallel regions, as a job's do.

``sleeping_torch_threads`` runs here, before ``tests/conftest.py`` imports torch: the only
moment the policy can be set. With libgomp's default spinning, the 2-thread torch passes in the
tests crawled whenever the cores were shared (the S3 pass runs beside the main one):
tests/engine/test_auto.py took 44 s against two busy loops, 15 s with the threads sleeping.
The same thread count computes the same numbers; an ``OMP_WAIT_POLICY`` set by the caller
still wins."""

from qaas_engine.sessions import sleeping_torch_threads

sleeping_torch_threads()
