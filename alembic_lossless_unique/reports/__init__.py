"""What a person reads before and after a run.

- ``preflight``: the read-only report of what an operation would find and do
- ``revision_plan``: ``python -m alembic_lossless_unique plan``, the pending revisions' plan
- ``hazards``: the versioned hazard codes; ``expected_plan``: the plan's fingerprint, and
  ``-x expect_plan``'s refusal
- ``report``: the run's summary, step by step
"""
