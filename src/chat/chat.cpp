// Conversation encoding (mistral-common's v1/v2/v3/v7 rules, ChatML, Zephyr), format detection and
// conversation JSON.
#include "mistral/chat.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "mistral/config.h"
#include "mistral/error.h"
#include "mistral/gguf.h"

namespace mistral {

namespace {

using json = nlohmann::json;

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

std::string rstrip_spaces(const std::string& s) {
  size_t n = s.size();
  while (n > 0 && s[n - 1] == ' ') --n;
  return s.substr(0, n);
}

bool known_role(const std::string& r) { return r == "system" || r == "user" || r == "assistant"; }

// A piece id for `text` among the tokenizer's control (or user-defined) pieces, else -1.
int32_t find_control_piece(const Tokenizer& tok, const std::string& text) {
  for (int id = 0; id < tok.vocab_size(); ++id) {
    const PieceType t = tok.type(id);
    if ((t == PieceType::Control || t == PieceType::UserDefined) && tok.piece(id) == text) return id;
  }
  return -1;
}

json parse_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw FileError(path + ": invalid JSON (" + e.what() + ")");
  }
}

const char* kFormatNames = "v1, v2, v3, v7, chatml, zephyr";

// config.version of a tekken.json ("v3", "v7", ...). The config object precedes the (large) vocabulary, so a
// scan of its text finds it without parsing the whole file; the full parse is the fallback.
std::string tekken_version(const std::string& path) {
  const std::string text = read_text_file(path);
  const size_t cfg = text.find("\"config\"");
  if (cfg != std::string::npos) {
    const size_t open = text.find('{', cfg);
    const size_t close = open == std::string::npos ? open : text.find('}', open);
    if (close != std::string::npos) {
      try {
        const json c = json::parse(text.substr(open, close - open + 1));
        if (c.contains("version") && c["version"].is_string()) return c["version"].get<std::string>();
      } catch (const json::exception&) {
      }
    }
  }
  try {
    const json j = json::parse(text);
    if (j.contains("config") && j["config"].is_object() && j["config"].contains("version") &&
        j["config"]["version"].is_string())
      return j["config"]["version"].get<std::string>();
  } catch (const json::exception& e) {
    throw FileError(path + ": invalid JSON (" + e.what() + ")");
  }
  throw FileError(path + ": no config.version");
}

// The system turn a ChatML template writes itself when the conversation has none, as in SmolLM2's
// {% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are ...<|im_end|>\n' }}:
// a string literal holding a whole system turn. "" when the template has no such literal.
std::string chatml_default_system(const std::string& jinja) {
  const std::string start = "<|im_start|>system";
  for (size_t p = jinja.find(start); p != std::string::npos; p = jinja.find(start, p + 1)) {
    size_t q = p + start.size();
    if (jinja.compare(q, 2, "\\n") == 0) q += 2;  // \n written as an escape in the Jinja source
    else if (q < jinja.size() && jinja[q] == '\n') q += 1;
    else continue;
    const size_t e = jinja.find("<|im_end|>", q);
    if (e == std::string::npos) break;
    const std::string raw = jinja.substr(q, e - q);
    if (raw.find_first_of("'\"{}+") != std::string::npos) continue;  // not one literal (e.g. + content)
    std::string text;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\\' && i + 1 < raw.size()) {
        const char c = raw[++i];
        text += c == 'n' ? '\n' : c == 't' ? '\t' : c;
      } else {
        text += raw[i];
      }
    }
    return text;
  }
  return "";
}

}  // namespace

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::V1: return "v1";
    case ChatFormat::V2: return "v2";
    case ChatFormat::V3: return "v3";
    case ChatFormat::V7: return "v7";
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Zephyr: return "zephyr";
  }
  return "?";
}

std::string chat_format_names() { return kFormatNames; }

ChatFormat parse_chat_format(const std::string& name) {
  const std::string n = lower(name);
  if (n == "v1") return ChatFormat::V1;
  if (n == "v2") return ChatFormat::V2;
  if (n == "v3") return ChatFormat::V3;
  if (n == "v7") return ChatFormat::V7;
  if (n == "chatml") return ChatFormat::ChatML;
  if (n == "zephyr") return ChatFormat::Zephyr;
  // Without tools, v11 and v13 encode conversations exactly as v7 (they differ in tool calls and thinking).
  if (n == "v11" || n == "v13") return ChatFormat::V7;
  if (n == "tekken")
    throw UsageError("--chat-format tekken: tekken is a tokenizer, not a chat format; tekken.json names its version "
                     "(v3, v7, v11, v13), which is used when --chat-format is not given (supported: " +
                     std::string(kFormatNames) + ")");
  throw UsageError("--chat-format " + name + ": unknown chat format (supported: " + kFormatNames + ")");
}

// ---- conversation JSON ------------------------------------------------------------------------------

Conversation parse_conversation_json(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw UsageError(where + ": invalid JSON (" + e.what() + ")");
  }
  if (j.is_object() && j.contains("messages")) j = j["messages"];
  if (!j.is_array())
    throw UsageError(where + ": a conversation is a JSON list of {\"role\", \"content\"} objects");
  Conversation conv;
  for (size_t i = 0; i < j.size(); ++i) {
    const json& m = j[i];
    const std::string at = where + ": message " + std::to_string(i + 1);
    if (!m.is_object()) throw UsageError(at + " is not an object");
    if (!m.contains("role") || !m["role"].is_string()) throw UsageError(at + " has no \"role\" string");
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (msg.role == "tool") throw UsageError(at + ": tool messages are not supported");
    if (!known_role(msg.role))
      throw UsageError(at + ": unknown role '" + msg.role + "' (expected system, user or assistant)");
    if (m.contains("tool_calls") && !m["tool_calls"].is_null() &&
        !(m["tool_calls"].is_array() && m["tool_calls"].empty()))
      throw UsageError(at + ": tool calls are not supported");
    if (!m.contains("content") || !m["content"].is_string())
      throw UsageError(at + " (" + msg.role + ") has no \"content\" string");
    msg.content = m["content"].get<std::string>();
    if (m.contains("ids") && !m["ids"].is_null()) {
      const json& ids = m["ids"];
      bool ok = ids.is_array() && msg.role == "assistant";
      for (size_t k = 0; ok && k < ids.size(); ++k)
        ok = ids[k].is_number_integer() && ids[k].get<int64_t>() >= 0 && ids[k].get<int64_t>() < (int64_t(1) << 31);
      if (!ok) throw UsageError(at + ": \"ids\" must be a list of token ids, on assistant messages");
      msg.ids = ids.get<std::vector<int32_t>>();
    }
    conv.push_back(std::move(msg));
  }
  return conv;
}

Conversation load_conversation_file(const std::string& path) {
  return parse_conversation_json(read_text_file(path), path);
}

std::string conversation_to_json(const Conversation& conv) {
  json j = json::array();
  for (const auto& m : conv) {
    json o = {{"role", m.role}, {"content", m.content}};
    if (!m.ids.empty()) o["ids"] = m.ids;
    j.push_back(std::move(o));
  }
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

// ---- what the model directory says ------------------------------------------------------------------

ChatTemplateInfo read_chat_template_info(const std::string& model_dir) {
  if (is_gguf_file(model_dir)) return gguf_chat_template_info(model_dir);  // tokenizer.chat_template
  ChatTemplateInfo info;
  const std::string added_path = model_dir + "/added_tokens.json";
  if (file_exists(added_path)) {
    const json j = parse_json_file(added_path);
    if (j.is_object())
      for (auto it = j.begin(); it != j.end(); ++it)
        if (it.value().is_number_integer()) info.added_tokens[it.key()] = it.value().get<int32_t>();
  }
  const std::string tj_path = model_dir + "/tokenizer.json";
  if (file_exists(tj_path)) {
    const json j = parse_json_file(tj_path);
    if (j.is_object() && j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const json& a : j["added_tokens"])
        if (a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
            a["content"].is_string())
          info.added_tokens[a["content"].get<std::string>()] = a["id"].get<int32_t>();
  }
  const std::string cfg_path = model_dir + "/tokenizer_config.json";
  if (file_exists(cfg_path)) {
    const json j = parse_json_file(cfg_path);
    if (!j.is_object()) throw FileError(cfg_path + ": expected a JSON object");
    if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
      const json& d = j["added_tokens_decoder"];
      for (auto it = d.begin(); it != d.end(); ++it) {
        if (!it.value().is_object() || !it.value().contains("content") || !it.value()["content"].is_string()) continue;
        try {
          size_t pos = 0;
          const long id = std::stol(it.key(), &pos);
          if (pos == it.key().size() && id >= 0 && id < (1L << 31))
            info.added_tokens[it.value()["content"].get<std::string>()] = int32_t(id);
        } catch (...) {
        }
      }
    }
    if (j.contains("chat_template")) {
      const json& t = j["chat_template"];
      if (t.is_string()) {
        info.chat_template = t.get<std::string>();
      } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        for (const json& e : t)
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
            info.chat_template = e["template"].get<std::string>();
        if (info.chat_template.empty())
          throw ConfigError(cfg_path + ": chat_template is a list without a \"default\" entry");
      } else if (!t.is_null()) {
        throw ConfigError(cfg_path + ": chat_template must be a string or a list of {name, template}");
      }
      if (!info.chat_template.empty()) info.source = cfg_path;
    }
  }
  const std::string jinja_path = model_dir + "/chat_template.jinja";  // newer transformers save it beside
  if (info.chat_template.empty() && file_exists(jinja_path)) {
    info.chat_template = read_text_file(jinja_path);
    info.source = jinja_path;
  }
  return info;
}

ChatFormat chat_format_from_template(const std::string& jinja, const Tokenizer& tok) {
  if (contains(jinja, "[INST]")) {
    const bool inst = find_control_piece(tok, "[INST]") >= 0;
    if (inst && find_control_piece(tok, "[SYSTEM_PROMPT]") >= 0 && contains(jinja, "[SYSTEM_PROMPT]"))
      return ChatFormat::V7;
    return inst ? ChatFormat::V3 : ChatFormat::V1;
  }
  if (contains(jinja, "<|im_start|>") && contains(jinja, "<|im_end|>")) return ChatFormat::ChatML;
  if (contains(jinja, "<|user|>") && contains(jinja, "<|assistant|>")) return ChatFormat::Zephyr;
  std::string head = jinja.substr(0, 80);
  for (char& c : head)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  throw ConfigError("unrecognised chat_template (it starts \"" + head + (jinja.size() > 80 ? "...\"" : "\"") +
                    "); choose a format with --chat-format NAME (" + kFormatNames + ")");
}

ChatFormat choose_chat_format(const std::string& requested, const Tokenizer& tok, const ChatTemplateInfo& info) {
  if (!requested.empty()) return parse_chat_format(requested);
  const std::string& src = tok.source();
  if (tok.kind() == TokenizerKind::Tekken) {
    const std::string v = tekken_version(src);
    if (v == "v3") return ChatFormat::V3;
    if (v == "v7" || v == "v11" || v == "v13") return ChatFormat::V7;
    throw ConfigError(src + ": tekken version '" + v + "' is not supported yet (v3, v7, v11, v13 are); choose a format "
                      "with --chat-format NAME (" + kFormatNames + ")");
  }
  // mistral-common names its SentencePiece files by instruct version: tokenizer.model.v3, ...v7m1.
  const size_t dot = src.rfind(".model.v");
  if (dot != std::string::npos) {
    std::string v = src.substr(dot + 7);
    const size_t m = v.find('m');
    if (m != std::string::npos) v = v.substr(0, m);
    if (v == "v1") return ChatFormat::V1;
    if (v == "v2") return ChatFormat::V2;
    if (v == "v3") return ChatFormat::V3;
    if (v == "v7") return ChatFormat::V7;
    throw ConfigError(src + ": instruct version " + v + " is not supported yet; choose a format with --chat-format NAME (" +
                      kFormatNames + ")");
  }
  if (!info.chat_template.empty()) return chat_format_from_template(info.chat_template, tok);
  if (find_control_piece(tok, "[INST]") >= 0)
    return find_control_piece(tok, "[SYSTEM_PROMPT]") >= 0 ? ChatFormat::V7 : ChatFormat::V3;
  throw ConfigError("cannot tell this model's chat format: no chat_template in tokenizer_config.json and no [INST] "
                    "control token in " + src + "; choose one with --chat-format NAME (" + kFormatNames + ")");
}

// ---- encoder ----------------------------------------------------------------------------------------

ChatEncoder::ChatEncoder(const Tokenizer& tok, ChatFormat format, const ChatTemplateInfo& info)
    : tok_(tok), format_(format) {
  for (const auto& kv : info.added_tokens) {
    specials_[kv.first] = kv.second;
    if (kv.second >= tok.vocab_size()) added_pieces_[kv.second] = kv.first;
  }
  for (int id = 0; id < tok.vocab_size(); ++id) {
    const PieceType t = tok.type(id);
    if (t == PieceType::Control || t == PieceType::UserDefined) specials_[tok.piece(id)] = id;
  }
  bos_ = tok.bos_id();
  eos_ = tok.eos_id();
  const std::string what = std::string("chat format ") + chat_format_name(format) + " needs ";
  const bool mistral = format == ChatFormat::V1 || format == ChatFormat::V2 || format == ChatFormat::V3 ||
                       format == ChatFormat::V7;
  if (mistral && bos_ < 0) throw ConfigError(what + "a BOS token, which " + tok.source() + " lacks");
  if (eos_ < 0) throw ConfigError(what + "an EOS token, which " + tok.source() + " lacks");
  if (format == ChatFormat::V2 || format == ChatFormat::V3 || format == ChatFormat::V7) {
    inst_ = find_control_piece(tok, "[INST]");
    end_inst_ = find_control_piece(tok, "[/INST]");
    if (inst_ < 0 || end_inst_ < 0)
      throw ConfigError(what + "the control tokens [INST] and [/INST], which " + tok.source() +
                        " lacks (for a tokenizer without them, try --chat-format v1)");
  }
  if (format == ChatFormat::V7) {
    sys_ = find_control_piece(tok, "[SYSTEM_PROMPT]");
    end_sys_ = find_control_piece(tok, "[/SYSTEM_PROMPT]");
    if (sys_ < 0 || end_sys_ < 0)
      throw ConfigError(what + "the control tokens [SYSTEM_PROMPT] and [/SYSTEM_PROMPT], which " + tok.source() +
                        " lacks (try --chat-format v3)");
  }
  if (mistral) {
    const std::vector<int32_t> a = tok.encode("a", false);
    const std::string first = a.empty() ? std::string() : tok.piece_bytes(a[0]);
    drop_answer_space_ = !first.empty() && first[0] == ' ';  // the tokenizer adds a dummy-prefix space
  }
  // Template formats: BOS when the template writes bos_token (Hugging Face adds nothing else); when the format
  // was forced without a template, start with BOS as Llama-family models were trained.
  if (format == ChatFormat::ChatML || format == ChatFormat::Zephyr) {
    if (!info.chat_template.empty() && !contains(info.chat_template, "bos_token")) bos_ = -1;
  }
  if (format == ChatFormat::ChatML) {
    default_system_ = chatml_default_system(info.chat_template);
    markers_ = {"<|im_start|>", "<|im_end|>"};
    const int32_t end = special("<|im_end|>");
    if (end >= 0) stop_ids_.push_back(end);
    else stop_strings_.push_back("<|im_end|>");
  }
  if (format == ChatFormat::Zephyr) markers_ = {"</s>"};
}

int32_t ChatEncoder::special(const std::string& text) const {
  if (format_ == ChatFormat::Zephyr && text == "</s>") return eos_;
  auto it = specials_.find(text);
  return it == specials_.end() ? -1 : it->second;
}

std::string ChatEncoder::answer_content(const std::string& generated) const {
  if (drop_answer_space_ && !generated.empty() && generated[0] == ' ') return generated.substr(1);
  return generated;
}

bool ChatEncoder::ids_spell(const std::vector<int32_t>& ids, const std::string& content) const {
  if (ids.empty()) return false;
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= tok_.vocab_size()) return false;
    const PieceType t = tok_.type(id);
    if (t == PieceType::Control || t == PieceType::Unknown || t == PieceType::Unused) return false;
    bytes += tok_.piece_bytes(id);
  }
  return bytes == content || (drop_answer_space_ && bytes.size() == content.size() + 1 && bytes[0] == ' ' &&
                              bytes.compare(1, std::string::npos, content) == 0);
}

std::string ChatEncoder::piece(int32_t id) const {
  auto it = added_pieces_.find(id);
  if (it != added_pieces_.end()) return it->second;
  if (id < 0 || id >= tok_.vocab_size()) return "";
  return tok_.piece(id);
}

void ChatEncoder::validate(const Conversation& conv, bool for_generation) const {
  if (conv.empty()) throw UsageError("the conversation is empty");
  for (size_t i = 0; i < conv.size(); ++i) {
    const ChatMessage& m = conv[i];
    const std::string at = "message " + std::to_string(i + 1);
    if (m.role == "tool") throw UsageError(at + ": tool messages are not supported");
    if (!known_role(m.role))
      throw UsageError(at + ": unknown role '" + m.role + "' (expected system, user or assistant)");
    // v7 (mistral-common's V5 validator) only needs a run of assistant messages to have some content.
    if (m.role == "assistant" && m.content.empty() && format_ != ChatFormat::V7)
      throw UsageError(at + ": an assistant message must have content");
  }
  // mistral-common's order rule: after an assistant message comes a user (or another assistant) message.
  const bool mistral = format_ != ChatFormat::ChatML && format_ != ChatFormat::Zephyr;
  for (size_t i = 1; mistral && i < conv.size(); ++i)
    if (conv[i - 1].role == "assistant" && conv[i].role == "system")
      throw UsageError("message " + std::to_string(i + 1) + ": a system message cannot follow an assistant message "
                       "(put the system prompt first)");
  if (conv.size() == 1 && conv[0].role != "user" && conv[0].role != "system")
    throw UsageError("a conversation must start with a user or system message");
  const std::string& last = conv.back().role;
  if (for_generation && conv.size() > 1 && last == "assistant")
    throw UsageError("to generate an answer the conversation must end with a user message, not an assistant one");
  if (!for_generation && last != "assistant")
    throw UsageError("a finished conversation must end with an assistant message (it ends with a " + last +
                     " message)");
}

std::vector<int32_t> ChatEncoder::encode(const Conversation& conv, bool for_generation) const {
  validate(conv, for_generation);
  if (format_ == ChatFormat::ChatML || format_ == ChatFormat::Zephyr) return encode_template(conv, for_generation);
  return encode_mistral(conv);
}

std::vector<int32_t> ChatEncoder::encode_mistral(const Conversation& conv) const {
  const bool v7 = format_ == ChatFormat::V7;
  // Normalise as mistral-common's InstructRequestNormalizer (v1-v3) / InstructRequestNormalizerV7 do.
  std::string system_prompt;
  bool has_system = false;
  if (!v7)
    for (const auto& m : conv)
      if (m.role == "system" && !m.content.empty()) {
        if (has_system) system_prompt += "\n\n";
        system_prompt += m.content;
        has_system = true;
      }
  std::vector<Norm> msgs;
  for (size_t i = 0; i < conv.size();) {
    size_t j = i;
    while (j < conv.size() && conv[j].role == conv[i].role) ++j;  // a run of one role
    const std::string& role = conv[i].role;
    if (role == "system") {
      if (v7)
        for (size_t k = i; k < j; ++k) msgs.push_back({"system", conv[k].content});
    } else {
      std::string merged;
      for (size_t k = i; k < j; ++k) {
        if (conv[k].content.empty()) continue;
        if (!merged.empty()) merged += "\n\n";
        merged += conv[k].content;
      }
      if (role == "assistant" && merged.empty())
        throw UsageError("message " + std::to_string(i + 1) + ": an assistant message must have content");
      Norm n{role, merged};
      // A lone answer with its own ids keeps them, unless mistral-common would change its text (rstrip).
      if (role == "assistant" && j == i + 1 && ids_spell(conv[i].ids, merged) &&
          (format_ == ChatFormat::V1 || rstrip_spaces(merged) == merged))
        n.ids = &conv[i].ids;
      msgs.push_back(n);
    }
    i = j;
  }
  if (msgs.empty() || (!v7 && msgs[0].role != "user")) msgs.insert(msgs.begin(), Norm{"user", ""});

  int first_user = -1, last_user = -1;
  for (size_t i = 0; i < msgs.size(); ++i)
    if (msgs[i].role == "user") {
      if (first_user < 0) first_user = int(i);
      last_user = int(i);
    }
  std::vector<int32_t> out{bos_};
  auto append = [&](const std::string& s) {
    const std::vector<int32_t> ids = tok_.encode(s, false);
    out.insert(out.end(), ids.begin(), ids.end());
  };
  for (size_t i = 0; i < msgs.size(); ++i) {
    const Norm& m = msgs[i];
    if (m.role == "user") {
      if (format_ == ChatFormat::V1) {
        const std::string c = (int(i) == first_user && has_system) ? system_prompt + "\n\n" + m.content : m.content;
        append("[INST] " + c + " [/INST]");
      } else {
        const std::string c = (int(i) == last_user && has_system) ? system_prompt + "\n\n" + m.content : m.content;
        out.push_back(inst_);
        append(c);
        out.push_back(end_inst_);
      }
    } else if (m.role == "assistant") {
      if (m.ids) out.insert(out.end(), m.ids->begin(), m.ids->end());
      else append(format_ == ChatFormat::V1 ? m.content : rstrip_spaces(m.content));
      out.push_back(eos_);
    } else {  // v7 system message
      out.push_back(sys_);
      append(m.content);
      out.push_back(end_sys_);
    }
  }
  return out;
}

std::vector<int32_t> ChatEncoder::encode_template(const Conversation& conv, bool for_generation) const {
  // Template text is split at special tokens; message contents are text whatever they contain, so a user
  // cannot type a control token. Runs of text between special tokens are encoded whole.
  std::vector<int32_t> out;
  if (bos_ >= 0) out.push_back(bos_);
  std::string run;
  auto flush = [&] {
    if (run.empty()) return;
    const std::vector<int32_t> ids = tok_.encode(run, false);
    out.insert(out.end(), ids.begin(), ids.end());
    run.clear();
  };
  auto literal = [&](const std::string& s) {  // template text: may hold special tokens
    std::vector<int32_t> ids;
    size_t pos = 0;
    while (pos < s.size()) {
      size_t best = std::string::npos;
      std::string marker;
      for (const auto& mk : markers_) {
        const size_t p = s.find(mk, pos);
        if (p != std::string::npos && (best == std::string::npos || p < best)) best = p, marker = mk;
      }
      if (best == std::string::npos) {
        run += s.substr(pos);
        break;
      }
      run += s.substr(pos, best - pos);
      const int32_t id = special(marker);
      if (id >= 0) {
        flush();
        out.push_back(id);
      } else {
        run += marker;
      }
      pos = best + marker.size();
    }
  };
  if (!default_system_.empty() && conv[0].role != "system")
    literal("<|im_start|>system\n" + default_system_ + "<|im_end|>\n");
  for (const auto& m : conv) {
    if (format_ == ChatFormat::ChatML) {
      literal("<|im_start|>" + m.role + "\n");
    } else {
      literal("<|" + m.role + "|>\n");
    }
    if (m.role == "assistant" && ids_spell(m.ids, m.content)) {  // the answer's own ids, as generated
      flush();
      out.insert(out.end(), m.ids.begin(), m.ids.end());
    } else {
      run += m.content;
    }
    literal(format_ == ChatFormat::ChatML ? "<|im_end|>\n" : "</s>\n");
  }
  if (for_generation) literal(format_ == ChatFormat::ChatML ? "<|im_start|>assistant\n" : "<|assistant|>\n");
  flush();
  return out;
}

std::unique_ptr<ChatEncoder> make_chat_encoder(const std::string& model_dir, const Tokenizer& tok,
                                               const std::string& requested) {
  const ChatTemplateInfo info = read_chat_template_info(model_dir);
  return std::unique_ptr<ChatEncoder>(new ChatEncoder(tok, choose_chat_format(requested, tok, info), info));
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace mistral
