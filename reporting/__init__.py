"""The reporting pipeline: verdicts, dead letters, feedback and metering into PostgreSQL.

* `reporting.records`  - topic records -> rows (validation against the contracts; reasons for what fails)
* `reporting.store`    - the SQL side: migrations, batched idempotent inserts, feedback, evaluation
* `reporting.app`      - the faust-streaming app that moves records from the topics into the store
  (the only module that imports faust)

This room sits beside `dlq`, above `consumers`; only the CLI imports it.
"""

COMPONENT = "reporting"
