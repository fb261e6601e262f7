// fs_cmd.h: the `detux fs` subcommands (fs_cmd.cc) and the read-only FUSE
// mount (fs_mount.cc).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "fs/fs.h"

// Adds `fs` and its subcommands to the tool; returns the `fs` subcommand.
CLI::App* add_fs_command(CLI::App& app);
// Runs the parsed `fs` subcommand; gives the exit status.
int run_fs_command();
// Serves fs read-only at dir until unmounted; gives the exit status.
int mount_fs(detux::fs::Fs& fs, const std::string& dir, bool foreground);
