@echo off
rem Start node 2 of the local cluster described by bin\cluster.toml, in the foreground.
cd /d "%~dp0"
cargo build --release --quiet -p kvnode || exit /b 1
..\target\release\kvnode.exe --cluster cluster.toml --id 2 --data-dir data\node2 %*
