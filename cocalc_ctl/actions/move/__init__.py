"""Moving a project between hosts: host-side steps (send, recv, finalize, cleanup) and the hub worker."""
