"""Several daemons, one set of rooms, on Redis (``roomctl serve --redis URL``)."""
