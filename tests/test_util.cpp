// Test helpers.
#include "test_util.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "mistral/backend.h"

namespace testutil {

// The build-time locations, unless the environment moves them (tests run from a copied build on
// another machine, as tools/gpu-check.sh does).
static std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
std::string shared_data(const std::string& rel) { return env_or("MISTRAL_SHARED_DATA", MISTRAL_SHARED_DATA) + "/" + rel; }
std::string source_path(const std::string& rel) { return env_or("MISTRAL_SOURCE_DIR", MISTRAL_SOURCE_DIR) + "/" + rel; }

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f.write(data.data(), std::streamsize(data.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/mistral-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::string cmd = "rm -rf '" + path_ + "'";
  if (std::system(cmd.c_str()) != 0) {
  }
}

namespace {
std::string drain(int fd) {
  std::string s;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, size_t(n));
  return s;
}
}  // namespace

RunResult run_cli(const std::vector<std::string>& args, const std::string& stdin_data) {
  TempDir td;
  const std::string out_path = td.file("out"), err_path = td.file("err"), in_path = td.file("in");
  write_file(in_path, stdin_data);
  pid_t pid = ::fork();
  if (pid == 0) {
    int in = ::open(in_path.c_str(), O_RDONLY);
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(in, 0), ::dup2(out, 1), ::dup2(err, 2);
    std::vector<char*> argv;
    std::string bin = MISTRAL_RUN_BIN;
    argv.push_back(const_cast<char*>(bin.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru;
  std::memset(&ru, 0, sizeof ru);
  ::wait4(pid, &status, 0, &ru);
  RunResult r;
  r.max_rss_kb = ru.ru_maxrss;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out_path);
  r.err = read_file(err_path);
  (void)drain;
  return r;
}

std::unique_ptr<mistral::Backend> backend_with(std::initializer_list<std::pair<const char*, const char*>> env,
                                               const std::function<std::unique_ptr<mistral::Backend>()>& make) {
  std::vector<std::pair<const char*, std::optional<std::string>>> saved;
  for (const auto& [name, value] : env) {
    const char* e = std::getenv(name);
    saved.emplace_back(name, e ? std::optional<std::string>(e) : std::nullopt);
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  auto be = make();
  for (const auto& [name, old] : saved) {
    if (old)
      ::setenv(name, old->c_str(), 1);
    else
      ::unsetenv(name);
  }
  return be;
}

std::unique_ptr<mistral::Backend> cpu_backend_with(const char* name, const char* value, int threads) {
  return backend_with({{name, value}}, [threads] { return mistral::make_cpu_backend(threads); });
}

}  // namespace testutil
