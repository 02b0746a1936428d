#!/usr/bin/env bash
# Install Debian's Slurm with accounting (slurmdbd + MariaDB: without `sacct`, submitit cannot see that a job
# died hard and waits forever). Needs root and apt; does nothing when the daemons are already installed.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null; then exit 0; fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd mariadb-server
