// Shared test helpers: paths to reference data, temp directories, running the CLI.
#pragma once
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mistral {
class Backend;
}

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

// make() called while the environment variables of `env` are set (value nullptr: unset), then put back as
// they were: a backend reads its experiment switches when it is made.
std::unique_ptr<mistral::Backend> backend_with(std::initializer_list<std::pair<const char*, const char*>> env,
                                               const std::function<std::unique_ptr<mistral::Backend>()>& make);
// A CPU backend of `threads` threads made with environment variable `name` set to `value` (as above).
std::unique_ptr<mistral::Backend> cpu_backend_with(const char* name, const char* value, int threads);

}  // namespace testutil
