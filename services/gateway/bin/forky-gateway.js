#!/usr/bin/env node
// A launcher that exists before the build, so npm can link it at install time.
import '../dist/main.js';
