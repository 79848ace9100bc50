/* overrides: placeholder, being written. */
#pragma once
