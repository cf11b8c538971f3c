// The only file that includes pybind11: exposes arib::LaneCoder as
// aribbps._coder. Arrays cross as contiguous NumPy buffers (no per-symbol
// Python work); the GIL is released while lanes are coded.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>

#include "lane_coder.hpp"
#include "latent.hpp"

namespace py = pybind11;
using arib::LaneCoder;

namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

void check_size(const py::array& a, py::ssize_t expected, const char* name) {
  if (a.size() != expected) {
    throw arib::InvalidArgument(std::string(name) + " has " + std::to_string(a.size()) + " elements, expected " +
                                std::to_string(expected));
  }
}

const int64_t* offsets_of(const LaneCoder& c, const CArray<int64_t>& offsets) {
  check_size(offsets, static_cast<py::ssize_t>(c.lanes()) + 1, "offsets");
  return offsets.data();
}

py::ssize_t total(const CArray<int64_t>& offsets) { return static_cast<py::ssize_t>(offsets.data()[offsets.size() - 1]); }

// Checks the arguments of a latent pop; returns the offsets.
const int64_t* latent_pop_args(const LaneCoder& c, const CArray<int32_t>& d_fixed, const CArray<uint8_t>& qp,
                               const CArray<int64_t>& offsets) {
  const int64_t* off = offsets_of(c, offsets);
  check_size(d_fixed, total(offsets), "d_fixed");
  check_size(qp, static_cast<py::ssize_t>(c.lanes()), "qp");
  return off;
}

}  // namespace

PYBIND11_MODULE(_coder, m) {
  m.doc() = "aribbps entropy coder core: parallel rANS stacks (see coder/lane_coder.hpp)";

  // InvalidArgument derives from std::invalid_argument, which pybind11 maps to ValueError.
  py::register_exception<arib::StreamError>(m, "StreamError", PyExc_ValueError);
  py::register_exception<arib::NotEnoughBits>(m, "NotEnoughBitsError", PyExc_ValueError);

  m.attr("LATENT_PRECISION_BITS") = arib::kLatentPrecisionBits;
  // Names of arib::ProbCode, by value.
  m.attr("PROB_CODES") = py::make_tuple("linear", "logit");
  m.attr("LATENT_D_FRAC_BITS") = arib::kLatentDFracBits;
  m.attr("LATENT_D_MAX") = arib::kLatentDMax;

  m.def(
      "latent_freqs",
      [](const CArray<uint32_t>& bins, const CArray<int32_t>& d_fixed, int qp) {
        check_size(d_fixed, bins.size(), "d_fixed");
        CArray<uint32_t> out(bins.size());
        const uint32_t* b = bins.data();
        const int32_t* d = d_fixed.data();
        uint32_t* o = out.mutable_data();
        for (py::ssize_t i = 0; i < bins.size(); ++i) o[i] = arib::latent_freq(d[i], qp, b[i]);
        return out;
      },
      py::arg("bins"), py::arg("d_fixed"), py::arg("qp"),
      "Frequencies (out of 2**LATENT_PRECISION_BITS) the coder assigns to latent bins.");

  m.def(
      "binary_code_ones",
      [](int prob_code) {
        const arib::BinaryCode& c = arib::binary_code(prob_code);
        CArray<uint32_t> out(256);
        std::copy(c.one, c.one + 256, out.mutable_data());
        return py::make_tuple(c.bits, out);
      },
      py::arg("prob_code"),
      "(bits, one): a probability byte q means P(1) = one[q] / 2**bits under this code.");

  m.def("encode_bound", &LaneCoder::encode_bound, py::arg("n_symbols"), py::arg("max_bits"),
        "Upper bound of one lane's serialised size after n symbols of at most max_bits each.");

  py::class_<LaneCoder>(m, "LaneCoder")
      .def(py::init<size_t, size_t, int>(), py::arg("lanes"), py::arg("threads") = 0, py::arg("prob_code") = 1)
      .def_static(
          "from_bytes",
          [](const std::vector<py::bytes>& streams, size_t threads, int prob_code) {
            std::vector<std::string> owned;
            owned.reserve(streams.size());
            for (const auto& s : streams) owned.emplace_back(s);
            std::vector<std::pair<const uint8_t*, size_t>> views;
            for (const auto& s : owned) views.emplace_back(reinterpret_cast<const uint8_t*>(s.data()), s.size());
            py::gil_scoped_release release;
            return new LaneCoder(views, threads, prob_code);
          },
          py::arg("streams"), py::arg("threads") = 0, py::arg("prob_code") = 1)
      .def_property_readonly("lanes", &LaneCoder::lanes)
      .def_property_readonly("threads", &LaneCoder::threads)
      .def("push_binary",
           [](LaneCoder& c, const CArray<uint8_t>& bits, const CArray<uint8_t>& probs, const CArray<int64_t>& offsets) {
             const int64_t* off = offsets_of(c, offsets);
             check_size(bits, total(offsets), "bits");
             check_size(probs, total(offsets), "probs");
             py::gil_scoped_release release;
             c.push_binary(bits.data(), probs.data(), off);
           })
      .def("pop_binary",
           [](LaneCoder& c, const CArray<uint8_t>& probs, const CArray<int64_t>& offsets) {
             const int64_t* off = offsets_of(c, offsets);
             check_size(probs, total(offsets), "probs");
             CArray<uint8_t> out(total(offsets));
             uint8_t* o = out.mutable_data();
             {
               py::gil_scoped_release release;
               c.pop_binary(probs.data(), off, o);
             }
             return out;
           })
      .def("push_rgb",
           [](LaneCoder& c, const CArray<uint8_t>& bits, const CArray<uint8_t>& probs, const CArray<int64_t>& offsets) {
             const int64_t* off = offsets_of(c, offsets);
             check_size(bits, 3 * total(offsets), "bits");
             check_size(probs, 7 * total(offsets), "probs");
             py::gil_scoped_release release;
             c.push_rgb(bits.data(), probs.data(), off);
           })
      .def("pop_rgb",
           [](LaneCoder& c, const CArray<uint8_t>& probs, const CArray<int64_t>& offsets) {
             const int64_t* off = offsets_of(c, offsets);
             check_size(probs, 7 * total(offsets), "probs");
             CArray<uint8_t> out({total(offsets), py::ssize_t{3}});
             uint8_t* o = out.mutable_data();
             {
               py::gil_scoped_release release;
               c.pop_rgb(probs.data(), off, o);
             }
             return out;
           })
      .def("push_uniform",
           [](LaneCoder& c, const CArray<uint32_t>& values, int k, const CArray<int64_t>& offsets) {
             const int64_t* off = offsets_of(c, offsets);
             check_size(values, total(offsets), "values");
             py::gil_scoped_release release;
             c.push_uniform(values.data(), k, off);
           })
      .def("pop_uniform",
           [](LaneCoder& c, int k, const CArray<int64_t>& offsets) {
             const int64_t* off = offsets_of(c, offsets);
             CArray<uint32_t> out(total(offsets));
             uint32_t* o = out.mutable_data();
             {
               py::gil_scoped_release release;
               c.pop_uniform(k, off, o);
             }
             return out;
           })
      .def("push_latent",
           [](LaneCoder& c, const CArray<uint32_t>& bins, const CArray<int32_t>& d_fixed, const CArray<uint8_t>& qp,
              const CArray<int64_t>& offsets) {
             const int64_t* off = offsets_of(c, offsets);
             check_size(bins, total(offsets), "bins");
             check_size(d_fixed, total(offsets), "d_fixed");
             check_size(qp, static_cast<py::ssize_t>(c.lanes()), "qp");
             py::gil_scoped_release release;
             c.push_latent(bins.data(), d_fixed.data(), qp.data(), off);
           })
      .def("pop_latent",
           [](LaneCoder& c, const CArray<int32_t>& d_fixed, const CArray<uint8_t>& qp, const CArray<int64_t>& offsets) {
             const int64_t* off = latent_pop_args(c, d_fixed, qp, offsets);
             CArray<uint32_t> out(total(offsets));
             uint32_t* o = out.mutable_data();
             {
               py::gil_scoped_release release;
               c.pop_latent(d_fixed.data(), qp.data(), off, o);
             }
             return out;
           })
      .def("pop_latent_partial",
           [](LaneCoder& c, const CArray<int32_t>& d_fixed, const CArray<uint8_t>& qp, const CArray<int64_t>& offsets) {
             const int64_t* off = latent_pop_args(c, d_fixed, qp, offsets);
             CArray<uint32_t> out(total(offsets));
             uint32_t* o = out.mutable_data();
             std::vector<uint8_t> flags(c.lanes());
             {
               py::gil_scoped_release release;
               c.pop_latent_partial(d_fixed.data(), qp.data(), off, o, flags.data());
             }
             CArray<bool> ok(static_cast<py::ssize_t>(c.lanes()));
             for (size_t l = 0; l < flags.size(); ++l) ok.mutable_data()[l] = flags[l] != 0;
             return py::make_tuple(out, ok);
           })
      .def("push_padding",
           [](LaneCoder& c, const CArray<int64_t>& words, const CArray<uint64_t>& seeds) {
             check_size(words, static_cast<py::ssize_t>(c.lanes()), "words");
             check_size(seeds, static_cast<py::ssize_t>(c.lanes()), "seeds");
             py::gil_scoped_release release;
             c.push_padding(words.data(), seeds.data());
           })
      .def("pop_padding",
           [](LaneCoder& c, const CArray<int64_t>& words, const CArray<uint64_t>& seeds) {
             check_size(words, static_cast<py::ssize_t>(c.lanes()), "words");
             check_size(seeds, static_cast<py::ssize_t>(c.lanes()), "seeds");
             CArray<bool> ok(static_cast<py::ssize_t>(c.lanes()));
             std::vector<uint8_t> flags(c.lanes());
             {
               py::gil_scoped_release release;
               c.pop_padding(words.data(), seeds.data(), flags.data());
             }
             bool* o = ok.mutable_data();
             for (size_t l = 0; l < flags.size(); ++l) o[l] = flags[l] != 0;
             return ok;
           })
      .def("num_bits",
           [](const LaneCoder& c) {
             const auto bits = c.num_bits();
             CArray<int64_t> out(static_cast<py::ssize_t>(bits.size()));
             std::copy(bits.begin(), bits.end(), out.mutable_data());
             return out;
           })
      .def("is_empty",
           [](const LaneCoder& c) {
             const auto e = c.is_empty();
             CArray<bool> out(static_cast<py::ssize_t>(e.size()));
             for (size_t l = 0; l < e.size(); ++l) out.mutable_data()[l] = e[l] != 0;
             return out;
           })
      .def("seal",
           [](LaneCoder& c, const CArray<uint64_t>& values) {
             check_size(values, static_cast<py::ssize_t>(c.lanes()), "values");
             c.seal(values.data());
           })
      .def("seal_values",
           [](const LaneCoder& c) {
             CArray<uint64_t> values(static_cast<py::ssize_t>(c.lanes()));
             CArray<bool> ok(static_cast<py::ssize_t>(c.lanes()));
             std::vector<uint8_t> flags(c.lanes());
             c.seal_values(values.mutable_data(), flags.data());
             for (size_t l = 0; l < flags.size(); ++l) ok.mutable_data()[l] = flags[l] != 0;
             return py::make_tuple(values, ok);
           })
      .def("to_bytes", [](const LaneCoder& c) {
        std::vector<std::vector<uint8_t>> streams;
        {
          py::gil_scoped_release release;
          streams = c.serialize();
        }
        py::list out;
        for (const auto& s : streams) out.append(py::bytes(reinterpret_cast<const char*>(s.data()), s.size()));
        return out;
      });
}
