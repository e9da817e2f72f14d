"""The aggregator's side: portfolio schedules (stage 1), the DSO-aggregator loop (stage 2), contracts
as data, markets as data, the multi-market decision (``decide``) and their reports.

Imports: ``analysis`` and below.
"""
