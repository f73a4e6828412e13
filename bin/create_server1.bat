@echo off
rem Start node 1 of the local cluster described by bin\cluster.toml, in the foreground.
rem Its data lives in bin\run\data\node1, where bin/cluster.sh keeps it too. The build is the
rem one every script runs, so a second script never compiles the dependencies again.
cd /d "%~dp0"
cargo build --release -p kvnode -p kvctl || exit /b 1
..\target\release\kvnode.exe --cluster cluster.toml --id 1 --data-dir run\data\node1 %*
