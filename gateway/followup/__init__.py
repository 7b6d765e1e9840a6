"""What follows a request once the client has its answer and the request is accounted: the
call added to its task (`requests.py`), and a shadow trial of a candidate model run in the
background (`shadow.py`, its records in `shadow_records.py`)."""
