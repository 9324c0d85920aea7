#include "benchmarks/ab_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "benchmarks/bench_flags.h"

namespace shmgrpc::bench {
namespace {

constexpr const char* kColumns[] = {
    "transport", "shape",  "size",   "concurrency", "calls",
    "p50_us",    "p90_us", "p99_us", "p999_us",     "qps",
    "mb_per_s",  "cpu_us_per_call",  "ctx_switches_per_call",
    "fallbacks", "p50_vs_uds"};

}  // namespace

void PrintTable(const std::vector<AbRow>& rows) {
  std::printf("%-8s %-6s %4s %-12s %9s %9s %9s %9s %9s %8s %8s %7s %6s %8s\n",
              "shape", "size", "conc", "transport", "p50_us", "p90_us",
              "p99_us", "p99.9_us", "qps", "MB/s", "cpu_us", "cs/call",
              "fallbk", "p50/uds");
  std::string last_cell;
  for (const AbRow& r : rows) {
    const std::string cell =
        absl::StrCat(r.shape, r.size, "/", r.concurrency);
    if (!last_cell.empty() && cell != last_cell) std::printf("\n");
    last_cell = cell;
    std::printf(
        "%-8s %-6s %4d %-12s %9.1f %9.1f %9.1f %9.1f %9.0f %8.1f %8.1f %7.2f "
        "%6lu %8.3f\n",
        r.shape.c_str(), SizeName(r.size).c_str(), r.concurrency,
        r.transport.c_str(), r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.qps,
        r.mb_per_s, r.cpu_us_per_call, r.context_switches_per_call,
        static_cast<unsigned long>(r.fallbacks), r.p50_vs_uds);
  }
}

bool WriteJson(const std::vector<AbRow>& rows, const std::string& path) {
  FILE* out = std::fopen(path.c_str(), "w");
  if (out == nullptr) return false;
  std::fprintf(out, "[\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    const AbRow& r = rows[i];
    std::fprintf(
        out,
        "  {\"transport\": \"%s\", \"shape\": \"%s\", \"size\": %zu, "
        "\"concurrency\": %d, \"calls\": %lu, \"p50_us\": %.2f, \"p90_us\": "
        "%.2f, \"p99_us\": %.2f, \"p999_us\": %.2f, \"qps\": %.1f, "
        "\"mb_per_s\": %.2f, \"cpu_us_per_call\": %.2f, "
        "\"ctx_switches_per_call\": %.3f, \"fallbacks\": %lu, "
        "\"p50_vs_uds\": %.4f}%s\n",
        r.transport.c_str(), r.shape.c_str(), r.size, r.concurrency,
        static_cast<unsigned long>(r.calls), r.p50_us, r.p90_us, r.p99_us,
        r.p999_us, r.qps, r.mb_per_s, r.cpu_us_per_call,
        r.context_switches_per_call, static_cast<unsigned long>(r.fallbacks),
        r.p50_vs_uds, i + 1 < rows.size() ? "," : "");
  }
  std::fprintf(out, "]\n");
  return std::fclose(out) == 0;
}

bool WriteCsv(const std::vector<AbRow>& rows, const std::string& path) {
  FILE* out = std::fopen(path.c_str(), "w");
  if (out == nullptr) return false;
  for (size_t i = 0; i < std::size(kColumns); ++i) {
    std::fprintf(out, "%s%s", i ? "," : "", kColumns[i]);
  }
  std::fprintf(out, "\n");
  for (const AbRow& r : rows) {
    std::fprintf(out,
                 "%s,%s,%zu,%d,%lu,%.2f,%.2f,%.2f,%.2f,%.1f,%.2f,%.2f,%.3f,"
                 "%lu,%.4f\n",
                 r.transport.c_str(), r.shape.c_str(), r.size, r.concurrency,
                 static_cast<unsigned long>(r.calls), r.p50_us, r.p90_us,
                 r.p99_us, r.p999_us, r.qps, r.mb_per_s, r.cpu_us_per_call,
                 r.context_switches_per_call,
                 static_cast<unsigned long>(r.fallbacks), r.p50_vs_uds);
  }
  return std::fclose(out) == 0;
}

namespace {

// A log-scale axis mapping [lo, hi] onto [from, to] pixels.
struct LogAxis {
  double lo, hi, from, to;
  double operator()(double v) const {
    return from + (std::log10(v) - std::log10(lo)) /
                      (std::log10(hi) - std::log10(lo)) * (to - from);
  }
};

const char* ColorOf(const std::string& transport) {
  static const std::map<std::string, const char*> colors = {
      {"shm-notify", "#d62728"}, {"shm-poll", "#ff7f0e"},
      {"shm-periodic", "#bcbd22"}, {"uds", "#1f77b4"},
      {"tcp", "#9467bd"},        {"inproc", "#7f7f7f"}};
  auto it = colors.find(transport);
  return it == colors.end() ? "#000000" : it->second;
}

}  // namespace

bool WriteSvg(const std::vector<AbRow>& rows, const std::string& subtitle,
              const std::string& path) {
  // Unary, concurrency 1: one line per transport.
  std::map<std::string, std::vector<const AbRow*>> lines;
  double min_size = 1e18, max_size = 0, min_us = 1e18, max_us = 0;
  double max_ratio = 1.0;
  for (const AbRow& r : rows) {
    if (r.shape != "unary" || r.concurrency != 1 || r.p50_us <= 0) continue;
    lines[r.transport].push_back(&r);
    min_size = std::min(min_size, double(r.size));
    max_size = std::max(max_size, double(r.size));
    min_us = std::min(min_us, r.p50_us);
    max_us = std::max(max_us, r.p50_us);
    if (r.transport.rfind("shm", 0) == 0) {
      max_ratio = std::max(max_ratio, r.p50_vs_uds);
    }
  }
  if (lines.empty() || max_size <= min_size) return false;
  FILE* out = std::fopen(path.c_str(), "w");
  if (out == nullptr) return false;
  const double width = 960, height = 460;
  std::fprintf(out,
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
               "height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
               "<text x=\"20\" y=\"24\" font-size=\"16\">shmgrpc A/B: unary "
               "echo p50 latency vs message size (concurrency 1)</text>\n"
               "<text x=\"20\" y=\"42\" fill=\"#555\">%s</text>\n",
               width, height, subtitle.c_str());
  // Left panel: latency, log-log. Right panel: shm/uds ratio, log x.
  const double top = 70, bottom = height - 60;
  const LogAxis x1{min_size, max_size, 70, 520};
  const double us_lo = std::pow(10, std::floor(std::log10(min_us)));
  const double us_hi = std::pow(10, std::ceil(std::log10(max_us)));
  const LogAxis y1{us_lo, us_hi, bottom, top};
  const LogAxis x2{min_size, max_size, 610, 930};
  const double ratio_hi = std::ceil(max_ratio * 4) / 4;
  auto y2 = [&](double ratio) {
    return bottom - ratio / ratio_hi * (bottom - top);
  };
  auto frame = [&](double left, double right) {
    std::fprintf(out,
                 "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" "
                 "fill=\"none\" stroke=\"#999\"/>\n",
                 left, top, right - left, bottom - top);
  };
  frame(70, 520);
  frame(610, 930);
  // X ticks at the measured sizes, both panels.
  std::vector<size_t> sizes;
  for (const auto& [name, points] : lines) {
    for (const AbRow* r : points) sizes.push_back(r->size);
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  for (size_t size : sizes) {
    for (const LogAxis* x : {&x1, &x2}) {
      std::fprintf(out,
                   "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%s"
                   "</text>\n",
                   (*x)(size), bottom + 16, SizeName(size).c_str());
    }
  }
  std::fprintf(out,
               "<text x=\"295\" y=\"%.0f\" text-anchor=\"middle\">message "
               "size (log)</text>\n<text x=\"770\" y=\"%.0f\" "
               "text-anchor=\"middle\">message size (log)</text>\n",
               bottom + 34, bottom + 34);
  // Y ticks: decades (latency), quarters (ratio).
  for (double us = us_lo; us <= us_hi * 1.001; us *= 10) {
    std::fprintf(out,
                 "<line x1=\"70\" x2=\"520\" y1=\"%.1f\" y2=\"%.1f\" "
                 "stroke=\"#eee\"/><text x=\"64\" y=\"%.1f\" "
                 "text-anchor=\"end\">%g</text>\n",
                 y1(us), y1(us), y1(us) + 4, us);
  }
  std::fprintf(out,
               "<text x=\"20\" y=\"%.0f\" transform=\"rotate(-90 20 %.0f)\" "
               "text-anchor=\"middle\">p50 latency, us (log)</text>\n",
               (top + bottom) / 2, (top + bottom) / 2);
  for (double ratio = 0; ratio <= ratio_hi + 1e-9; ratio += 0.25) {
    std::fprintf(out,
                 "<line x1=\"610\" x2=\"930\" y1=\"%.1f\" y2=\"%.1f\" "
                 "stroke=\"%s\"/><text x=\"604\" y=\"%.1f\" "
                 "text-anchor=\"end\">%.2f</text>\n",
                 y2(ratio), y2(ratio), ratio == 1.0 ? "#1f77b4" : "#eee",
                 y2(ratio) + 4, ratio);
  }
  std::fprintf(out,
               "<text x=\"770\" y=\"62\" text-anchor=\"middle\">p50 shm / "
               "p50 uds (below 1: shm faster)</text>\n");
  // Lines and legend.
  int legend = 0;
  for (const auto& [name, points] : lines) {
    std::vector<const AbRow*> sorted = points;
    std::sort(sorted.begin(), sorted.end(),
              [](const AbRow* a, const AbRow* b) { return a->size < b->size; });
    std::string latency, ratio;
    for (const AbRow* r : sorted) {
      absl::StrAppend(&latency, absl::StrFormat("%.1f,%.1f ", x1(r->size),
                                                y1(r->p50_us)));
      absl::StrAppend(&ratio, absl::StrFormat("%.1f,%.1f ", x2(r->size),
                                              y2(r->p50_vs_uds)));
    }
    std::fprintf(out,
                 "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" "
                 "stroke-width=\"2\"/>\n",
                 latency.c_str(), ColorOf(name));
    if (name.rfind("shm", 0) == 0) {
      std::fprintf(out,
                   "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" "
                   "stroke-width=\"2\"/>\n",
                   ratio.c_str(), ColorOf(name));
    }
    std::fprintf(out,
                 "<rect x=\"%d\" y=\"%.0f\" width=\"12\" height=\"3\" "
                 "fill=\"%s\"/><text x=\"%d\" y=\"%.0f\">%s</text>\n",
                 80 + legend * 105, height - 16, ColorOf(name),
                 96 + legend * 105, height - 11, name.c_str());
    ++legend;
  }
  std::fprintf(out, "</svg>\n");
  return std::fclose(out) == 0;
}

}  // namespace shmgrpc::bench
