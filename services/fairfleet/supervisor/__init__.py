"""`fairfleet up` as a supervisor: processes (:mod:`.fleet`), logs (:mod:`.logs`), the state a
running up leaves for the other commands (:mod:`.state`), its control socket (:mod:`.control`)
and the up loop itself (:mod:`.up`). docs/operations.md describes the commands.
"""
