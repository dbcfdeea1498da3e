"""The web application: jobs API, tiles by job id, and the static web map (``terrastill serve``)."""
