@echo off
rem Start node 1 of the local cluster described by bin\cluster.toml, in the foreground.
cd /d "%~dp0"
cargo build --release --quiet -p kvnode || exit /b 1
..\target\release\kvnode.exe --cluster cluster.toml --id 1 --data-dir data\node1 %*
