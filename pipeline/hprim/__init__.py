"""HPRIM intake: the files French laboratories export → routing facts, like HL7 v2.

Two formats, one domain:
- HPRIM Santé (H2.0 to H2.4): records H, P, OBR, OBX, C, A (continuation), L, with the
  delimiters the H record declares (`sante`);
- HPRIM Médecins: a 12-line header, free text, `****LAB****` blocks of `RES|` / `TEX|`
  lines, `****FIN****`, `****FINFICHIER****` (`medecins`).

Both produce `pipeline.hl7.facts.RoutingFacts`, so record, route, seal, send, trace and the
API work unchanged; `intake.read_hprim` is the one call. What was decided where the
published sources are silent is written down in docs/hprim.md.
"""
