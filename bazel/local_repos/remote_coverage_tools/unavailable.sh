#!/bin/sh
echo "coverage is not available in the offline shmgrpc build" >&2
exit 1
