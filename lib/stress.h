/* stress: placeholder, being written. */
#pragma once
