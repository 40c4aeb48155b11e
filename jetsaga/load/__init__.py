"""`jetsaga load`, the load test runner (SPEC §7).

`runner` is the entry point; `arrivals` paces open-loop sends, `workload` makes the orders,
`sender` posts them, `watch` learns final statuses, `tracker` records what happened,
`stock` checks conservation, and `report`, `chart` and `progress` show the result.
"""
