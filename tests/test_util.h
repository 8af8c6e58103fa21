// Shared test helpers: paths to reference data, temp directories, running the CLI.
#pragma once
#include <string>
#include <vector>

namespace testutil {

std::string shared_data(const std::string& rel);  // ../shared/data/<rel>
std::string source_path(const std::string& rel);  // <repo>/<rel>
bool exists(const std::string& path);
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& data);

// A fresh temporary directory, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code = -1;  // 128+signal when killed by a signal
  std::string out, err;
  long max_rss_kb = 0;  // peak resident memory of the child
};
// Runs mistral-run with the given arguments (no shell), capturing stdout and stderr.
RunResult run_cli(const std::vector<std::string>& args, const std::string& stdin_data = "");

// Sets environment variable `name` to `value` for its lifetime (nullptr: unset), then puts it back (for
// the backends' experiment switches, read when a backend is made).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value);
  ~ScopedEnv();
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, old_;
  bool had_ = false;
};

}  // namespace testutil
