#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "tests/common/test_helpers.h"
#include "train/metrics.h"
#include "train/progress.h"

namespace fs = std::filesystem;

namespace lathe::train {
namespace {

using test::TmpDir;

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::istringstream in(test::read_file(path));
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

// Everything written to a FILE* (a real file, so the stream is not a terminal).
std::string contents(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, n);
  return s;
}

TEST(Metrics, FansOutToJsonlTensorBoardAndConsole) {
  TmpDir tmp;
  std::FILE* console = std::tmpfile();
  ASSERT_NE(console, nullptr);
  MetricsOptions opt;
  opt.jsonl_path = tmp / "run/metrics.jsonl";
  opt.tensorboard_dir = tmp / "run/tb";
  opt.progress.total_steps = 4;
  opt.progress.log_interval = 2;
  opt.progress.out = console;
  opt.progress.tty = -1;  // a regular file is not a tty: plain lines
  nlohmann::json config = {{"model", {{"name", "gpt2"}}}, {"optimizer", {{"lr", 3e-4}}}};
  std::string tb_path;
  {
    MetricsLogger log(opt, config);
    EXPECT_FALSE(log.progress()->is_tty());
    for (int64_t s = 1; s <= 4; ++s) {
      double loss = s == 3 ? std::nan("") : 4.0 - 0.5 * static_cast<double>(s);
      log.log(s, {{"loss", loss}, {"lr", 1e-4 * static_cast<double>(s)}, {"tokens_per_s", 12345.0}});
    }
    log.log_event({{"event", "checkpoint"}, {"step", 4}});
    tb_path = log.tensorboard()->path();
    log.finish();
  }

  std::vector<nlohmann::json> lines = read_jsonl(opt.jsonl_path);
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[0]["config"], config);  // first line: the resolved config
  EXPECT_EQ(lines[0]["event"], "start");
  for (int64_t s = 1; s <= 4; ++s) {
    const nlohmann::json& l = lines[static_cast<size_t>(s)];
    EXPECT_EQ(l["step"], s);
    EXPECT_TRUE(l["time"].is_number());
    EXPECT_EQ(l["lr"].get<double>(), 1e-4 * static_cast<double>(s));
    EXPECT_EQ(l["tokens_per_s"].get<double>(), 12345.0);
    if (s == 3) {
      EXPECT_TRUE(l["loss"].is_null());  // NaN has no JSON spelling
    } else {
      EXPECT_EQ(l["loss"].get<double>(), 4.0 - 0.5 * static_cast<double>(s));
    }
  }
  EXPECT_EQ(lines[5]["event"], "checkpoint");

  std::vector<TbEvent> ev = read_tb_events(tb_path);
  ASSERT_EQ(ev.size(), 5u);  // version header + one event per log()
  for (int64_t s = 1; s <= 4; ++s) {
    const TbEvent& e = ev[static_cast<size_t>(s)];
    EXPECT_EQ(e.step, s);
    ASSERT_EQ(e.scalars.size(), 3u);  // sorted by tag: loss, lr, tokens_per_s
    EXPECT_EQ(e.scalars[0].first, "loss");
    if (s != 3) {
      EXPECT_EQ(e.scalars[0].second, static_cast<float>(4.0 - 0.5 * static_cast<double>(s)));
    }
    EXPECT_EQ(e.scalars[1].first, "lr");
    EXPECT_EQ(e.scalars[1].second, static_cast<float>(1e-4 * static_cast<double>(s)));
  }
  EXPECT_TRUE(std::isnan(ev[3].scalars[0].second));

  // Plain lines every log_interval (steps 2 and 4), no carriage returns.
  std::string out = contents(console);
  std::fclose(console);
  EXPECT_EQ(out.find('\r'), std::string::npos) << out;
  EXPECT_EQ(out.find("step 1/4"), std::string::npos) << out;
  EXPECT_NE(out.find("step 2/4 | loss 3.0000 | lr 2.00e-04 | 12.3k tok/s | ETA"), std::string::npos) << out;
  EXPECT_NE(out.find("step 4/4 | loss 2.0000"), std::string::npos) << out;
}

TEST(Metrics, AppendKeepsEarlierSessions) {
  TmpDir tmp;
  MetricsOptions opt;
  opt.jsonl_path = tmp / "m.jsonl";
  opt.console = false;
  {
    MetricsLogger a(opt, "model { name: \"x\" }");
    a.log(1, {{"loss", 1.0}});
  }
  opt.append = true;
  {
    MetricsLogger b(opt, "model { name: \"x\" }");
    b.log(2, {{"loss", 0.5}});
  }
  std::vector<nlohmann::json> lines = read_jsonl(opt.jsonl_path);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0]["config"], "model { name: \"x\" }");
  EXPECT_EQ(lines[1]["step"], 1);
  EXPECT_EQ(lines[2]["event"], "start");
  EXPECT_EQ(lines[3]["loss"].get<double>(), 0.5);
}

TEST(Progress, TerminalLineUpdatesInPlaceWithEta) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  ProgressOptions opt;
  opt.total_steps = 100;
  opt.out = f;
  opt.tty = 1;
  Progress p(opt);
  p.update_at(0, {{"loss", 5.0}}, 10.0);
  p.update_at(10, {{"loss", 4.0}, {"tokens_per_s", 2.5e6}}, 15.0);  // 0.5 s/step, 90 left
  std::string live = contents(f);
  EXPECT_EQ(live.find('\n'), std::string::npos) << live;
  EXPECT_NE(live.find("\rstep 10/100 | loss 4.0000 | 2.50M tok/s | ETA 45s\x1b[K"), std::string::npos) << live;
  p.message("eval loss 3.9");
  p.finish();
  std::string all = contents(f);
  std::fclose(f);
  EXPECT_NE(all.find("\r\x1b[Keval loss 3.9\nstep 10/100"), std::string::npos) << all;
  EXPECT_EQ(all.back(), '\n');
}

TEST(Progress, FormatDuration) {
  EXPECT_EQ(Progress::format_duration(45.2), "45s");
  EXPECT_EQ(Progress::format_duration(185), "3m05s");
  EXPECT_EQ(Progress::format_duration(3725), "1h02m");
  EXPECT_EQ(Progress::format_duration(2 * 86400 + 3 * 3600 + 59), "2d03h");
  EXPECT_EQ(Progress::format_duration(-1), "?");
  EXPECT_EQ(Progress::format_duration(std::nan("")), "?");
}

}  // namespace
}  // namespace lathe::train
