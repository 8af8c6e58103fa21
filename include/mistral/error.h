// Typed errors for bad input. main() turns any of these into one line on stderr and a non-zero exit.
#pragma once
#include <stdexcept>
#include <string>

namespace mistral {

// Base of every error caused by user input (files, flags, JSON). Internal invariants use assert.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// A file or directory that is missing, unreadable, truncated or malformed.
class FileError : public Error {
 public:
  using Error::Error;
};

// A config whose values are missing, of the wrong type, or inconsistent.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A checkpoint whose tensors do not match what the config requires.
class WeightError : public Error {
 public:
  using Error::Error;
};

// A bad command-line value or runtime request (e.g. an id out of range).
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace mistral
